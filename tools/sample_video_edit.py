"""The edit chains on the example workflows' own sample video, through the library (what the edit
workflows run in ComfyUI, without the host): exact inversion at guidance 1, then Reference Attention
+ Guided Sample with each setting given; edit hit (colour and direction), mask IoU and centroid path
error against the source frames, as the workflows' host tests score them.

    python tools/sample_video_edit.py --model assets/tiny-wan --settings 4/5/off 4/5/on 2/7/on

An image-to-video model is inverted with the video's first frame and edited from the workflow's recoloured
first frame (assets/videos/<video>_first_frame_<colour>.png), as workflows/i2v_edit.json does.

A setting is "defaults" (Reference Attention and Guided Sample at their node defaults, guidance 5: what the edit
workflows run) or weight/guidance/mask[/end[/start]] (mask "on": the prediction difference cut at Otsu's level,
Guided Sample's default mask; a number: the same at Otsu's level times it, Guided Sample's mask_level; "off": none;
end: the fraction of the steps the injection runs, 1 when not given; start: Guided Sample's start, "inverted"
when not given, "masked" for "fresh in mask")."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.benchkit import edit_mask, node_defaults  # noqa: E402
from tools.make_sample_video import sample_spec  # noqa: E402
from vidinv import families, pipeline, synthetic  # noqa: E402
from vidinv.attention import ReferenceOptions  # noqa: E402
from vidinv.family import Guidance  # noqa: E402
from vidinv.models import cogvideox, wan  # noqa: E402
from vidinv.solver import Solver  # noqa: E402


def run(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    module = wan if wan.is_model_folder(Path(args.model)) else cogvideox
    model = module.load(args.model, "fp32")
    spec = sample_spec(args.video)
    frames = synthetic.render(spec)  # what the workflows' VAE Encode passes on as the source frames
    x0 = module.encode_video(model, torch.from_numpy(frames))
    source = module.encode_text(model, [spec.caption])
    edit = module.encode_text(model, [spec.caption.replace(spec.colour, args.colour)])
    image = edit_image = None
    if getattr(model, "is_i2v", False):  # I2V: the source's first frame, and the workflow's edited one
        from PIL import Image
        png = ROOT / "assets" / "videos" / f"{Path(args.video).stem}_first_frame_{args.colour}.png"
        edited = torch.from_numpy(np.asarray(Image.open(png).convert("RGB"), dtype=np.float32) / 255)[None]
        image, edit_image = (families.of(model).first_frame_latents(model, x0, f)
                             for f in (torch.from_numpy(frames[:1]), edited))
    traj = pipeline.invert(model, source, x0, args.steps, Guidance(1.0), Solver(), image_latents=image)
    rows = []
    for setting in args.settings:
        if setting == "defaults":
            em = None
            z = node_defaults(model, traj, edit, 5.0, edit_image)
        else:
            parts = setting.split("/")
            weight, guidance, mask = parts[:3]
            end = parts[3] if len(parts) > 3 else "1"
            start = parts[4] if len(parts) > 4 else "inverted"
            patched = pipeline.with_reference(model, traj, ReferenceOptions(weight=float(weight), end=float(end)))
            em = edit_mask(None if mask == "off" else ("difference", 0.0, "otsu", 0,
                                                       1.0 if mask == "on" else float(mask)))
            z = pipeline.guided_sample(patched, edit, Guidance(float(guidance)),
                                       start=pipeline.STARTS[2] if start == "masked" else start, edit_mask=em,
                                       image_latents=edit_image)
        out = module.decode_video(model, z).numpy()
        got = synthetic.describe(out)
        rows.append({"setting": setting, "colour": got["colour"], "direction": got["direction"],
                     "mask_iou": float(synthetic.mask_iou(out, frames)),
                     "centroid_err_px": float(synthetic.centroid_error(out, frames)),
                     "mask_fraction": None if em is None else float(em.latent.mean())})
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "assets" / "tiny-wan"))
    p.add_argument("--video", default="vinv_red_circle_right.mp4")
    p.add_argument("--colour", default="green", help="the edited prompt's colour (the workflows': green)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--settings", nargs="+", default=["4/5/off", "4/5/on"])
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
