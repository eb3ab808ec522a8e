"""Inversion benchmark for Stable Video Diffusion on the bundled tiny SVD: the round trip of the
exact Euler (EDM) inversion, with the same table as the CogVideoX benchmark (tools/bench_inversion.py).

    python tools/bench_svd_inversion.py [--videos 8] [--steps 25 14] [--max-guidance 1 3]

For each held-out video (encoded with the fixture's VAE, conditioned on its own first frame and
motion bucket): invert to noise, sample back with the same frame-wise guidance (min 1 -> max),
and compare with the source latent (relative L2 error) and, decoded, with the source's VAE
reconstruction (PSNR). Rows:
  plain k      fixed-point iteration with k refinements; k = 0 is the naive inverse Euler step
               (the model evaluated at the cleaner latent)
  anderson k   Anderson-accelerated, k refinements
  default      as the Euler Invert (SVD) node runs by default (Anderson, tolerance 1e-5, <= 10)
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

from tools.benchkit import CountingHooks, inversion_markdown, machine, rel_err, report  # noqa: E402
from vidinv.family import Guidance  # noqa: E402
from vidinv.solver import Solver  # noqa: E402
from vidinv.fixture import BUCKETS, first_frame_conditioning  # noqa: E402
from vidinv import pipeline, synthetic  # noqa: E402
from vidinv.models import svd  # noqa: E402

METHODS = {**{f"plain {k}": (k, 0, 0.0) for k in (0, 1, 3, 10)},
           **{f"anderson {k}": (k, 5, 0.0) for k in (3, 10)},
           "default": (10, 5, 1e-5)}  # name -> (iterations, Anderson memory, tolerance)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    model = svd.load(args.model, "fp32")
    specs = [dataclasses.replace(s, frames=model.native_frames) for s in synthetic.heldout_specs(args.videos)]
    videos = [torch.from_numpy(synthetic.render(s)) for s in specs]
    x0 = torch.cat([svd.encode_video(model, v) for v in videos])
    cond = first_frame_conditioning(model, torch.stack([v[0] for v in videos]),
                                    [BUCKETS[s.direction] for s in specs], seed=0)
    recon = svd.decode_video(model, x0).numpy().reshape(len(specs), -1, *videos[0].shape[1:])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    tables = []
    for steps in args.steps:
        for gmax in args.max_guidance:
            g = (args.min_guidance, gmax)
            fresh = pipeline.sample(model, cond, noise * svd.initial_sigma(model, steps), steps,
                                    Guidance(g[1], first=g[0]))
            rows = []
            for name, (iters, memory, tol) in METHODS.items():
                counter = [0]
                start = time.time()
                traj = pipeline.invert(model, cond, x0, steps, Guidance(g[1], first=g[0]),
                                       Solver(iters=iters, tol=tol, memory=memory), hooks=CountingHooks(counter))
                back = pipeline.sample(model, cond, traj.noise, steps, Guidance(g[1], first=g[0]))
                seconds = time.time() - start
                errs = rel_err(back, x0)
                frames = svd.decode_video(model, back).numpy().reshape(recon.shape)
                rows.append({"method": name, "rel_err": float(np.mean(errs)), "rel_err_max": float(np.max(errs)),
                             "psnr_db": float(np.mean([synthetic.psnr(f, r) for f, r in zip(frames, recon)])),
                             "calls_per_step": counter[0] / steps, "seconds": seconds,
                             "residuals": traj.residuals, "step_calls": traj.calls})
                print(json.dumps({"steps": steps, "guidance": list(g),
                                  **{k: v for k, v in rows[-1].items() if k not in ("residuals", "step_calls")}}),
                      flush=True)
            tables.append({"steps": steps, "guidance": gmax, "min_guidance": g[0],
                           "fresh_noise_rel_err": float(np.mean(rel_err(fresh, x0))), "rows": rows})
    return {"model": model.describe(), "videos": len(specs), "machine": machine(), "tables": tables}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "assets" / "tiny-svd"))
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--steps", type=int, nargs="+", default=[25, 14])
    p.add_argument("--min-guidance", type=float, default=1.0)
    p.add_argument("--max-guidance", type=float, nargs="+", default=[1.0, 3.0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the raw results here")
    args = p.parse_args(argv)
    report(run(args), inversion_markdown, "bench_svd_inversion.py", argv, args.json)


if __name__ == "__main__":
    main()
