"""Measure the quality gates of the bundled model (issue: tiny trained CogVideoX fixture).

    python tools/evaluate_fixture.py [--model assets/tiny-cogvideox] [--only vae|generation]

VAE: held-out videos encoded and decoded through the pack's own VAE functions; PSNR and the
shape / colour / direction classifiers on the reconstructions.
Generation: every caption (4 colours x 3 shapes x 4 directions) x seeds, 50 DDIM steps, at
guidance 5 and 1; classifier accuracies and mean motion. Results go to stdout as JSON and to
<model>/quality.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.fixturekit import accuracy, evaluate_vae, generation_accuracy  # noqa: E402
from vidinv.family import Guidance  # noqa: E402
from vidinv import pipeline, synthetic  # noqa: E402
from vidinv.models import cogvideox  # noqa: E402


def evaluate_generation(model, seeds: int, guidance: float, steps: int = 50, chunk: int = 48) -> dict:
    h, w = model.native_size
    frames_n = int(model.tcfg["sample_frames"])  # the video length the transformer was configured for
    f = (frames_n - 1) // model.temporal_factor + 1
    shape = (f, model.latent_channels, h // model.spatial_factor, w // model.spatial_factor)
    return generation_accuracy(model, cogvideox.encode_text, cogvideox.decode_video, shape, seeds, guidance, steps,
                               chunk)


def evaluate_i2v(model, count: int, guidance: float = 5.0, steps: int = 50) -> dict:
    """Held-out videos regenerated from their first frame and caption."""
    specs = synthetic.heldout_specs(count)
    frames = [torch.from_numpy(synthetic.render(s)) for s in specs]
    h, w = model.native_size
    f = (int(model.tcfg["sample_frames"]) - 1) // model.temporal_factor + 1
    img = torch.cat([cogvideox.encode_image_latents(model, fr, f) for fr in frames])
    cond = cogvideox.encode_text(model, [s.caption for s in specs])
    noise = torch.randn(count, f, model.latent_channels, h // model.spatial_factor, w // model.spatial_factor,
                        generator=torch.Generator().manual_seed(7))
    out = cogvideox.decode_video(model,
                                 pipeline.sample(model, cond, noise, steps, Guidance(guidance), image_latents=img))
    out = out.numpy().reshape(count, -1, h, w, 3)
    preds = [synthetic.describe(v) for v in out]
    return {"guidance": guidance, "steps": steps, "videos": count,
            "first_frame_psnr_db": float(np.mean([synthetic.psnr(v[0], fr[0].numpy()) for v, fr in zip(out, frames)])),
            "mask_iou": float(np.mean([synthetic.mask_iou(v, fr.numpy()) for v, fr in zip(out, frames)])),
            **{f"{k}_acc": accuracy(preds, specs, k) for k in ("shape", "colour", "direction")}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "assets" / "tiny-cogvideox"))
    p.add_argument("--only", choices=["vae", "generation"])
    p.add_argument("--vae-videos", type=int, default=48)
    p.add_argument("--seeds", type=int, default=2, help="seeds per caption (48 captions)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = cogvideox.load(args.model, "fp32")
    result = {"model": model.describe()}
    if model.is_i2v:
        result["i2v"] = evaluate_i2v(model, args.vae_videos)
        print(json.dumps(result["i2v"]), flush=True)
        if not args.no_write:
            (Path(args.model) / "quality.json").write_text(json.dumps(result, indent=1))
        return result
    if args.only in (None, "vae"):
        result["vae"] = evaluate_vae(model, args.vae_videos)
        print(json.dumps(result["vae"]), flush=True)
    if args.only in (None, "generation"):
        result["generation"] = [evaluate_generation(model, args.seeds, g) for g in (5.0, 1.0)]
        print(json.dumps(result["generation"]), flush=True)
    if not args.no_write and args.only is None:
        (Path(args.model) / "quality.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
