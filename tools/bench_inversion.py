"""Inversion benchmark on the bundled model: round-trip error of the naive diffusers recipe
against exact fixed-point inversion, in one run, one table.

    python tools/bench_inversion.py [--videos 8] [--out BENCHMARKS-inversion.md]

For each held-out video (encoded with the bundled VAE): invert to noise, sample back with the
same guidance, and compare with the source latent (relative L2 error) and, decoded, with the
source's VAE reconstruction (PSNR). Rows:
  naive        DDIMInverseScheduler(**scheduler.config), then CogVideoXDDIMScheduler sampling
  plain k      ours, fixed-point iteration with k refinements (k = 0 is the naive algebra on the
               right schedule)
  anderson k   ours, Anderson-accelerated, k refinements
  default      ours as the DDIM Invert node runs by default (Anderson, tolerance 1e-5, <= 10)
  NPI          (guidance > 1) negative-prompt inversion: exact guidance-1 inversion, sampled with
               guidance w and the source prompt as the negative
  null-text lr (guidance > 1) exact guidance-1 inversion, then null-text optimisation (10 Adam
               iterations per step at learning rate lr), sampled with guidance w and the optimised
               negatives
  prompt tuning lr  exact guidance-1 inversion, then prompt-tuning inversion at guidance w (10 Adam
               iterations per step at learning rate lr, tolerance 1e-5), sampled with guidance w and
               the tuned conditional embeddings (eta 0)
Model calls per step and seconds sit beside each row; the fresh-noise baseline (sampling from
random noise) is printed with every table, because the black background dominates the latent.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.benchkit import CountingHooks, encode_heldout, inversion_markdown, machine, rel_err, report  # noqa: E402
from vidinv.family import Guidance  # noqa: E402
from vidinv.solver import Solver  # noqa: E402
from vidinv import nulltext, pipeline, synthetic  # noqa: E402
from vidinv.models import cogvideox  # noqa: E402


def naive_round_trip(model, cond, x0, steps, guidance, counter):
    """The published recipe: the generic inverse scheduler built from the model's config (which
    drops snr_shift_scale), then the CogVideoX sampler."""
    from diffusers import CogVideoXDDIMScheduler, DDIMInverseScheduler
    den = cogvideox.make_denoiser(model, cond, guidance, False, steps)
    inv = DDIMInverseScheduler(**model.scheduler_config)
    inv.set_timesteps(steps)
    x = x0.clone()
    for t in inv.timesteps:
        counter[0] += 1
        x = inv.step(den(x, int(t)), t, x, return_dict=False)[0].float()
    fwd = CogVideoXDDIMScheduler(**model.scheduler_config)
    fwd.set_timesteps(steps)
    for t in fwd.timesteps:
        x = fwd.step(den(x, int(t)), t, x, return_dict=False)[0].float()
    return x


def pivot(model, cond, x0, steps, hooks):
    """The exact guidance-1 inversion that NPI, null-text and prompt tuning start from."""
    return pipeline.invert(model, cond, x0, steps, guidance=Guidance(1.0), settings=Solver(iters=10, tol=1e-5),
                           hooks=hooks)


def npi_round_trip(model, cond, x0, steps, guidance, counter, null_lr=None):
    """Negative-prompt (null_lr None) or null-text inversion (10 iterations per step at learning
    rate null_lr) around an exact guidance-1 pivot."""
    hooks = CountingHooks(counter)
    traj = pivot(model, cond, x0, steps, hooks)
    mode = "source prompt"
    if null_lr is not None:
        traj = nulltext.null_text_inversion(model, traj, guidance, iters=10, lr=null_lr, hooks=hooks)
        mode = "null-text"
    back = pipeline.sample(model, cond, traj.noise, steps, Guidance(guidance),
                           negative=nulltext.negative_for(mode, traj))
    return back, traj


def pti_round_trip(model, cond, x0, steps, guidance, counter, lr):
    """Prompt-tuning inversion at `guidance` around an exact guidance-1 pivot, sampled back at eta 0."""
    hooks = CountingHooks(counter)
    traj = nulltext.prompt_tuning_inversion(model, pivot(model, cond, x0, steps, hooks), guidance, iters=10, lr=lr,
                                            hooks=hooks)
    back = pipeline.sample(model, cond, traj.noise, steps, guidance=Guidance(guidance),
                           positive=nulltext.positive_for(traj, cond, 0.0))
    return back, traj


def ours_round_trip(model, cond, x0, steps, guidance, iters, memory, tol, counter):
    hooks = CountingHooks(counter)
    traj = pipeline.invert(model, cond, x0, steps, Guidance(guidance), Solver(iters=iters, tol=tol, memory=memory),
                           hooks=hooks)
    back = pipeline.sample(model, cond, traj.noise, steps, Guidance(guidance))
    return back, traj


def methods(guidance: float) -> dict:
    """name -> runner(model, cond, x0, steps, guidance, counter) -> (x0 back, trajectory or None)."""
    def ours(iters, memory, tol):
        return lambda *a: ours_round_trip(*a[:5], iters, memory, tol, a[5])

    out = {"naive": lambda *a: (naive_round_trip(*a), None)}
    out.update({f"plain {k}": ours(k, 0, 0.0) for k in (0, 1, 3, 10)})
    out.update({f"anderson {k}": ours(k, 5, 0.0) for k in (3, 10)})
    out["default"] = ours(10, 5, 1e-5)
    if guidance > 1:
        out["NPI"] = npi_round_trip
        out.update({f"null-text lr {lr:g}": (lambda *a, lr=lr: npi_round_trip(*a, null_lr=lr)) for lr in (0.01, 0.05)})
    out.update({f"prompt tuning lr {lr:g}": (lambda *a, lr=lr: pti_round_trip(*a, lr)) for lr in (0.01, 0.05)})
    return out


def decoded_psnr(model, z, ref_frames):
    frames = cogvideox.decode_video(model, z).numpy().reshape(ref_frames.shape)
    return [synthetic.psnr(f, r) for f, r in zip(frames, ref_frames)]


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    model = cogvideox.load(args.model, "fp32")
    specs, x0 = encode_heldout(model, args.videos)
    cond = cogvideox.encode_text(model, [s.caption for s in specs])
    h, w = model.native_size
    recon = cogvideox.decode_video(model, x0).numpy().reshape(len(specs), -1, h, w, 3)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    tables = []
    for steps in args.steps:
        for guidance in args.guidance:
            fresh = pipeline.sample(model, cond, noise, steps, Guidance(guidance))
            rows = []
            for name, runner in methods(guidance).items():
                if args.methods and name not in args.methods:
                    continue
                counter = [0]
                start = time.time()
                back, traj = runner(model, cond, x0, steps, guidance, counter)
                seconds = time.time() - start
                errs = rel_err(back, x0)
                rows.append({"method": name, "rel_err": float(np.mean(errs)), "rel_err_max": float(np.max(errs)),
                             "psnr_db": float(np.mean(decoded_psnr(model, back, recon))),
                             "calls_per_step": counter[0] / steps, "seconds": seconds,
                             "residuals": None if traj is None else traj.residuals,
                             "step_calls": None if traj is None else traj.calls})
                print(json.dumps({"steps": steps, "guidance": guidance, **{k: v for k, v in rows[-1].items()
                                                                           if k not in ("residuals", "step_calls")}}),
                      flush=True)
            tables.append({"steps": steps, "guidance": guidance, "fresh_noise_rel_err": float(np.mean(rel_err(fresh, x0))),
                           "rows": rows})
    return {"model": model.describe(), "videos": len(specs), "machine": machine(), "tables": tables}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "assets" / "tiny-cogvideox"))
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--steps", type=int, nargs="+", default=[50, 20])
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 6.0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--methods", nargs="*", default=[], help="only these rows (e.g. default); all when empty")
    args = p.parse_args(argv)
    report(run(args), inversion_markdown, "bench_inversion.py", argv, args.json)


if __name__ == "__main__":
    main()
