"""Write the sample videos of the example workflows (generator output, held-out seeds).

    python tools/make_sample_video.py      # -> assets/videos/*.mp4

VP9, lossless 4:4:4 in MP4 (plays in browsers, decodes with PyAV); the frames decoded back are checked against the generator's
(PSNR printed) so the workflows start from what the generator made."""
from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidinv import synthetic  # noqa: E402

SAMPLES = {  # file name: (shape, colour, direction)
    "vinv_red_circle_right.mp4": ("circle", "red", "right"),
    "vinv_blue_square_up.mp4": ("square", "blue", "up"),
}
FPS = 8


def write_mp4(path: Path, frames: np.ndarray, fps: int = FPS) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libvpx-vp9", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        stream.options = {"lossless": "1"}
        for f in frames:
            img = av.VideoFrame.from_ndarray((f * 255).round().astype(np.uint8), format="rgb24")
            for packet in stream.encode(img):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def read_mp4(path: Path) -> np.ndarray:
    with av.open(str(path)) as f:
        return np.stack([fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]).astype(np.float32) / 255


EDITED_FIRST_FRAMES = {  # file name: (sample video, colour of the edited first frame)
    "vinv_red_circle_right_first_frame_green.png": ("vinv_red_circle_right.mp4", "green"),
}


def sample_spec(name: str) -> synthetic.VideoSpec:
    i = list(SAMPLES).index(name)
    shape, colour, direction = SAMPLES[name]
    return synthetic.random_spec(synthetic.HELDOUT_SEED_BASE + 500 + i, shape=shape, colour=colour,
                                 direction=direction)


def main() -> None:
    import dataclasses

    from PIL import Image

    out_dir = ROOT / "assets" / "videos"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (video_name, colour) in EDITED_FIRST_FRAMES.items():
        frame = synthetic.render(dataclasses.replace(sample_spec(video_name), colour=colour))[0]
        Image.fromarray((frame * 255).round().astype(np.uint8)).save(out_dir / name)
        print(f"{name}: first frame of {video_name} recoloured {colour}")
    for name in SAMPLES:
        spec = sample_spec(name)
        frames = synthetic.render(spec)
        write_mp4(out_dir / name, frames)
        back = read_mp4(out_dir / name)
        print(f"{name}: {spec.caption}, {back.shape}, PSNR after mp4 {synthetic.psnr(back, frames):.1f} dB, "
              f"{(out_dir / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
