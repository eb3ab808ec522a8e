"""Guided reconstruction of a trajectory inverted under CFG, and what its reference rows cost.

    python tools/bench_cfg_reference.py [--videos 8] [--guidance 6] [--json out.json]

Each held-out video is inverted exactly with its caption at guidance g (CFG in both directions),
then sampled back at the same guidance with the source prompt:
  plain              DDIM Sample from the inverted noise (the round trip)
  guided             Reference Attention at its defaults: a CFG trajectory gets one reference
                     row per CFG row, made with the conditioning that row had at inversion
  guided rows=cond   only the conditional row receives the reference (one reference row)
  shared row         the layout before the fix: one reference row made with the source prompt,
                     shared by both CFG rows (DESIGN fact 5 does not hold for the unconditional row)
Errors are relative L2 latent errors against the source latent and against the plain round trip;
seconds are the median of `--repeats` runs of the whole batch after a warm-up (CPU wall clock:
the ratio to plain is what to read).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.benchkit import encode_heldout, machine, rel_err, report, time_samplers  # noqa: E402
from vidinv.family import Guidance  # noqa: E402
from vidinv import attention, pipeline  # noqa: E402
from vidinv.attention import ReferenceOptions, ReferenceSpec  # noqa: E402
from vidinv.models import cogvideox  # noqa: E402


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    model = cogvideox.load(args.model, "fp32")
    specs, x0 = encode_heldout(model, args.videos)
    cond = cogvideox.encode_text(model, [s.caption for s in specs])
    g = args.guidance
    traj = pipeline.invert(model, cond, x0, args.steps, Guidance(g))

    def guided(opts, shared=False):
        patched = dataclasses.replace(model, reference=ReferenceSpec(traj, opts))

        def go():
            if not shared:
                return pipeline.guided_sample(patched, cond, Guidance(g))
            with mock.patch.object(attention, "reference_per_cfg_row", lambda *a: False):
                return pipeline.guided_sample(patched, cond, Guidance(g))
        return go

    samplers = {"plain": lambda: pipeline.sample(model, cond, traj.noise, args.steps, Guidance(g)),
                "guided": guided(ReferenceOptions()),
                "guided rows=cond": guided(ReferenceOptions(rows="conditional")),
                "shared row": guided(ReferenceOptions(), shared=True)}
    out = {name: fn() for name, fn in samplers.items()}
    timing = time_samplers(samplers, args.repeats)
    rows = [{"method": name, "rel_err": float(np.mean(rel_err(z, x0))),
             "vs_plain": float(np.mean(rel_err(z, out["plain"]))), **timing[name]} for name, z in out.items()]
    return {"model": model.describe(), "videos": len(specs), "steps": args.steps, "guidance": g,
            "machine": machine(), "inversion_residual_max": max(traj.residuals), "rows": rows}


def markdown(result: dict, command: str) -> str:
    out = [f"Command: `{command}`  ", f"Machine: {result['machine']}  ",
           f"Model: {result['model']}; {result['videos']} held-out videos, {result['steps']} steps, inverted and "
           f"sampled at guidance {result['guidance']:g} (inversion residual max {result['inversion_residual_max']:.1e}).",
           "", "| method | latent rel. error vs source | vs plain round trip | seconds | × plain |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        out.append(f"| {r['method']} | {r['rel_err']:.2e} | {r['vs_plain']:.2e} | {r['seconds']:.2f} | "
                   f"{r['ratio_to_plain']:.2f} |")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "assets" / "tiny-cogvideox"))
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=6.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the raw results here")
    args = p.parse_args(argv)
    report(run(args), markdown, "bench_cfg_reference.py", argv, args.json)


if __name__ == "__main__":
    main()
