"""Measure the quality gates of the tiny trained SVD (issue 8).

    python tools/evaluate_svd_fixture.py [--model assets/tiny-svd] [--only vae|generation] [--videos 48]

VAE: held-out videos (`synthetic.heldout_specs`, never trained on) encoded and decoded through the
pack's own functions (`vidinv.models.svd`); PSNR and the shape / colour / direction classifiers
on the reconstructions.

Generation: each held-out first frame through the pack's conditioning and Euler sampler
(`vidinv.edm`, SVD's 25 steps, frame-wise guidance 1 -> 3, noise augmentation 0.02), with
  * its own direction's motion bucket (in distribution): direction / shape / colour kept,
    first-frame PSNR, mean travel of the centroid against the real video's;
  * every motion bucket (--all-buckets): direction accuracy per bucket, the first frame asking
    for a direction it was not drawn for (the shape may reach the border).
Results go to stdout as JSON and to <model>/quality.json (unless --no-write).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.fixturekit import evaluate_vae  # noqa: E402
from vidinv import edm, synthetic  # noqa: E402
from vidinv.fixture import BUCKETS, first_frame_conditioning  # noqa: E402
from vidinv.models import svd  # noqa: E402


def accuracy(preds, wanted, key) -> float:
    return float(np.mean([p[key] == w for p, w in zip(preds, wanted)]))


def travel(video: np.ndarray) -> float:
    path = synthetic.centroid_path(video)
    ok = ~np.isnan(path[:, 0])
    return float(np.linalg.norm(path[ok][-1] - path[ok][0])) if ok.sum() >= 2 else 0.0


def generate(model, firsts: torch.Tensor, buckets: list[int], steps: int, guidance: tuple[float, float],
             seed: int, chunk: int = 24) -> np.ndarray:
    """Videos [N, F, H, W, 3] from first frames [N, H, W, 3], one motion bucket each."""
    grid = edm.grid_from_config(model.scheduler_config, steps)
    h, w = firsts.shape[1:3]
    f, s = model.native_frames, model.spatial_factor
    out = []
    for i in range(0, len(firsts), chunk):
        j = min(i + chunk, len(firsts))
        cond = first_frame_conditioning(model, firsts[i:j], buckets[i:j], seed + i)
        noise = torch.randn(j - i, f, model.latent_channels, h // s, w // s,
                            generator=torch.Generator().manual_seed(seed + i))
        z = edm.sample(svd.make_denoiser(model, cond, grid, *guidance), noise * grid.init_noise_sigma, grid.sigmas)
        out.append(svd.decode_video(model, z).numpy().reshape(j - i, f, h, w, 3))
    return np.concatenate(out)


def evaluate_generation(model, count: int, seeds: int, steps: int, guidance: tuple[float, float],
                        all_buckets: bool) -> dict:
    specs = [s for s in synthetic.heldout_specs(count) for _ in range(seeds)]
    real = [synthetic.render(dataclasses.replace(s, frames=model.native_frames)) for s in specs]
    firsts = torch.from_numpy(np.stack([r[0] for r in real]))
    start = time.time()
    videos = generate(model, firsts, [BUCKETS[s.direction] for s in specs], steps, guidance, seed=100)
    preds = [synthetic.describe(v) for v in videos]
    result = {"videos": len(specs), "steps": steps, "guidance": list(guidance),
              **{f"{k}_acc": accuracy(preds, [getattr(s, k) for s in specs], k)
                 for k in ("shape", "colour", "direction")},
              "direction_acc_by_bucket": {
                  f"{d} ({b})": accuracy([p for p, s in zip(preds, specs) if s.direction == d], [d] * len(specs),
                                         "direction")
                  for d, b in BUCKETS.items() if any(s.direction == d for s in specs)},
              "first_frame_psnr_db": float(np.mean([synthetic.psnr(v[0], r[0]) for v, r in zip(videos, real)])),
              "mask_iou": float(np.mean([synthetic.mask_iou(v, r) for v, r in zip(videos, real)])),
              "mean_travel_px": float(np.mean([travel(v) for v in videos])),
              "real_travel_px": float(np.mean([travel(r) for r in real]))}
    if all_buckets:
        dirs = list(BUCKETS)
        wanted = [d for _ in specs for d in dirs]
        many = generate(model, firsts.repeat_interleave(len(dirs), 0), [BUCKETS[d] for d in wanted], steps,
                        guidance, seed=200)
        preds = [synthetic.describe(v) for v in many]
        result["all_buckets"] = {
            "videos": len(many),
            "direction_acc_by_bucket": {f"{d} ({BUCKETS[d]})": accuracy([p for p, w in zip(preds, wanted) if w == d],
                                                                       [d] * len(specs), "direction") for d in dirs},
            "mean_travel_px": float(np.mean([travel(v) for v in many]))}
    result["seconds"] = time.time() - start
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "assets" / "tiny-svd"))
    p.add_argument("--only", choices=["vae", "generation"])
    p.add_argument("--videos", type=int, default=48, help="held-out videos")
    p.add_argument("--seeds", type=int, default=1, help="generations per held-out first frame")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--min-guidance", type=float, default=1.0)
    p.add_argument("--max-guidance", type=float, default=3.0)
    p.add_argument("--all-buckets", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = svd.load(args.model, "fp32")
    result = {"model": model.describe()}
    if args.only in (None, "vae"):
        result["vae"] = evaluate_vae(model, args.videos, svd.encode_video, svd.decode_video)
        print(json.dumps(result["vae"]), flush=True)
    if args.only in (None, "generation"):
        result["generation"] = evaluate_generation(model, args.videos, args.seeds, args.steps,
                                                   (args.min_guidance, args.max_guidance), args.all_buckets)
        print(json.dumps(result["generation"]), flush=True)
    if not args.no_write and args.only is None:
        (Path(args.model) / "quality.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
