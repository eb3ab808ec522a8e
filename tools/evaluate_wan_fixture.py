"""Measure the quality gates of the bundled tiny Wan (assets/tiny-wan).

    python tools/evaluate_wan_fixture.py [--model assets/tiny-wan] [--seeds 2] [--frames 9 --height 64 --width 64]

VAE: held-out videos encoded and decoded through the pack's Wan VAE functions; PSNR and the
shape / colour / direction classifiers on the reconstructions. Generation: every caption
(4 colours x 3 shapes x 4 directions) x seeds, 50 flow Euler steps from fresh noise, at guidance 5
and 1; videos and generated latents of --frames x --height x --width (a model trained at another frame size is
measured at its own). Results go to stdout as JSON and to <model>/quality.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.benchkit import add_video_arguments, video_size  # noqa: E402
from tools.fixturekit import evaluate_vae, generation_accuracy  # noqa: E402
from vidinv.models import wan  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "assets" / "tiny-wan"))
    p.add_argument("--vae-videos", type=int, default=48)
    p.add_argument("--seeds", type=int, default=2, help="seeds per caption (48 captions)")
    p.add_argument("--guidance", type=float, nargs="+", default=[5.0, 1.0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    add_video_arguments(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = wan.load(args.model, "fp32")
    frames, height, width = video_size(args)
    result = {"model": model.describe(), "vae": evaluate_vae(model, args.vae_videos, wan.encode_video, wan.decode_video,
                                                             (frames, height, width))}
    print(json.dumps(result["vae"]), flush=True)
    shape = ((frames - 1) // model.temporal_factor + 1, model.latent_channels, height // model.spatial_factor,
             width // model.spatial_factor)
    result["generation"] = [generation_accuracy(model, wan.encode_text, wan.decode_video, shape, args.seeds, g)
                            for g in args.guidance]
    print(json.dumps(result["generation"]), flush=True)
    if not args.no_write:
        (Path(args.model) / "quality.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
