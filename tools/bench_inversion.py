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
  null-text k  (guidance > 1) exact guidance-1 inversion, then null-text optimisation (k Adam
               iterations per step), sampled with guidance w and the optimised negatives
Model calls per step and seconds sit beside each row; the fresh-noise baseline (sampling from
random noise) is printed with every table, because the black background dominates the latent.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidinv import ddim, inversion, nulltext, synthetic  # noqa: E402
from vidinv.models import cogvideox  # noqa: E402


def encode_heldout(model, count: int):
    specs = synthetic.heldout_specs(count)
    x0 = torch.cat([cogvideox.encode_video(model, torch.from_numpy(synthetic.render(s))) for s in specs])
    return specs, x0


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


def npi_round_trip(model, cond, x0, steps, guidance, counter, null_iters=None):
    """Negative-prompt (null_iters None) or null-text inversion around an exact guidance-1 pivot."""
    hooks = CountingHooks(counter)
    traj = inversion.invert(model, cond, x0, steps, 1.0, iters=10, tol=1e-5, hooks=hooks)
    mode = "source prompt"
    if null_iters is not None:
        traj = nulltext.null_text_inversion(model, traj, guidance, iters=null_iters, hooks=hooks)
        mode = "null-text"
    back = inversion.sample(model, cond, traj.noise, steps, guidance, negative=nulltext.negative_for(mode, traj))
    return back, traj


def ours_round_trip(model, cond, x0, steps, guidance, iters, memory, tol, counter):
    hooks = CountingHooks(counter)
    traj = inversion.invert(model, cond, x0, steps, guidance, iters=iters, tol=tol, memory=memory, hooks=hooks)
    back = inversion.sample(model, cond, traj.noise, steps, guidance)
    return back, traj


class CountingHooks(inversion.Hooks):
    def __init__(self, counter):
        self.counter = counter

    def before_call(self):
        self.counter[0] += 1


def rel_err(a, b):
    return [float((x - y).norm() / y.norm()) for x, y in zip(a, b)]


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
            fresh = inversion.sample(model, cond, noise, steps, guidance)
            rows = []
            configs = [("naive", None, None, None)]
            configs += [(f"plain {k}", k, 0, 0.0) for k in (0, 1, 3, 10)]
            configs += [(f"anderson {k}", k, 5, 0.0) for k in (3, 10)]
            configs += [("default", 10, 5, 1e-5)]
            if guidance > 1:
                configs += [("NPI", "npi", None, None), ("null-text 10", "null", 10, None)]
            for name, iters, memory, tol in configs:
                counter = [0]
                start = time.time()
                if iters in ("npi", "null"):
                    back, traj = npi_round_trip(model, cond, x0, steps, guidance, counter, memory)
                    resid = traj.residuals
                elif iters is None:
                    back = naive_round_trip(model, cond, x0, steps, guidance, counter)
                    resid = None
                else:
                    back, traj = ours_round_trip(model, cond, x0, steps, guidance, iters, memory, tol, counter)
                    resid = traj.residuals
                seconds = time.time() - start
                errs = rel_err(back, x0)
                rows.append({"method": name, "rel_err": float(np.mean(errs)), "rel_err_max": float(np.max(errs)),
                             "psnr_db": float(np.mean(decoded_psnr(model, back, recon))),
                             "calls_per_step": counter[0] / steps, "seconds": seconds,
                             "residuals": resid})
                print(json.dumps({"steps": steps, "guidance": guidance, **{k: v for k, v in rows[-1].items()
                                                                           if k != "residuals"}}), flush=True)
            tables.append({"steps": steps, "guidance": guidance, "fresh_noise_rel_err": float(np.mean(rel_err(fresh, x0))),
                           "rows": rows})
    return {"model": model.describe(), "videos": len(specs), "machine": machine(), "tables": tables}


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def markdown(result: dict, command: str) -> str:
    out = [f"Command: `{command}`  ", f"Machine: {result['machine']}  ",
           f"Model: {result['model']}; {result['videos']} held-out videos, fp32.", ""]
    for tab in result["tables"]:
        out += [f"**{tab['steps']} steps, guidance {tab['guidance']:g}** (fresh-noise baseline: relative error "
                f"{tab['fresh_noise_rel_err']:.3f})", "",
                "| method | latent rel. error (mean / max) | decoded PSNR vs VAE recon (dB) | model calls / step | seconds |",
                "|---|---|---|---|---|"]
        for r in tab["rows"]:
            out.append(f"| {r['method']} | {r['rel_err']:.2e} / {r['rel_err_max']:.2e} | {r['psnr_db']:.1f} | "
                       f"{r['calls_per_step']:.2f} | {r['seconds']:.1f} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "assets" / "tiny-cogvideox"))
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--steps", type=int, nargs="+", default=[50, 20])
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 6.0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the raw results here")
    args = p.parse_args(argv)
    result = run(args)
    command = "python tools/bench_inversion.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(markdown(result, command.strip()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
