"""Model calls of exact inversion with the Invert nodes' defaults, on every bundled model (and any
other model folder given): the round trip and what it cost, one table.

    python tools/bench_calls.py [--videos 8] [--threads 1] [--model PATH ...] [--per-video] [--json calls.json]

Each held-out video (BENCHMARKS.md) is inverted with the node defaults (`Solver()`: 10 refinements
per step on average, pooled, tolerance 1e-5, Anderson memory 5, automatic damping) and its caption
(and first frame where the model takes one), sampled back with the same guidance, and compared with
the source latent (relative L2 error). Rows: CogVideoX T2V and I2V at guidance 1 and 6, 50 steps;
Wan at guidance 1 and 5, 50 steps; SVD at its node's 25 steps and at 50, guidance 1 -> 1 (and
1 -> 3 at 25). Columns: model calls per step (a CFG call counts once), the clean-end step's calls
(inverted first) and the mean of the others, the largest step residual, the steps above the
tolerance, and seconds. The videos are inverted as one batch (each step's count is its slowest video's), or
with --per-video each on its own, as an Invert node gets one video, the counts averaged.
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

from tools.benchkit import CountingHooks, encode_heldout, machine, rel_err  # noqa: E402
from vidinv import pipeline, synthetic  # noqa: E402
from vidinv.family import Guidance  # noqa: E402
from vidinv.solver import Solver  # noqa: E402


def cases(path: Path, videos: int):
    """(model, conditioning(rows), x0, image_latents, [(steps, Guidance), ...]) for the model folder at `path`;
    `conditioning(rows)` encodes the videos of the slice `rows` (captions, or SVD's first frames)."""
    cfg = path / "model_index.json"
    kind = json.loads(cfg.read_text()).get("_class_name", "") if cfg.exists() else ""
    if "StableVideoDiffusion" in kind:
        from vidinv.fixture import BUCKETS, first_frame_conditioning
        from vidinv.models import svd
        model = svd.load(path, "fp32")
        specs = [dataclasses.replace(s, frames=model.native_frames) for s in synthetic.heldout_specs(videos)]
        clips = [torch.from_numpy(synthetic.render(s)) for s in specs]
        x0 = torch.cat([svd.encode_video(model, c) for c in clips])

        def cond(rows: slice):
            return first_frame_conditioning(model, torch.stack([c[0] for c in clips[rows]]),
                                            [BUCKETS[s.direction] for s in specs[rows]], seed=0)
        return model, cond, x0, None, [(25, Guidance(1.0, first=1.0)), (50, Guidance(1.0, first=1.0)),
                                       (25, Guidance(3.0, first=1.0))]
    if "Wan" in kind:
        from vidinv.models import wan
        model = wan.load(path, "fp32")
        specs, x0 = encode_heldout(model, videos)
        return model, lambda rows: wan.encode_text(model, [s.caption for s in specs[rows]]), x0, None, \
            [(50, Guidance(1.0)), (50, Guidance(5.0))]
    from vidinv.models import cogvideox
    model = cogvideox.load(path, "fp32")
    specs = synthetic.heldout_specs(videos)
    clips = [torch.from_numpy(synthetic.render(s)).float() for s in specs]
    x0 = torch.cat([cogvideox.encode_video(model, c) for c in clips])
    img = torch.cat([cogvideox.encode_image_latents(model, c, x0.shape[1]) for c in clips]) if model.is_i2v else None
    return model, lambda rows: cogvideox.encode_text(model, [s.caption for s in specs[rows]]), x0, img, \
        [(50, Guidance(1.0)), (50, Guidance(6.0))]


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    paths = [Path(p) for p in args.model] or [ROOT / "assets" / n for n in
                                              ("tiny-cogvideox", "tiny-cogvideox-i2v", "tiny-wan", "tiny-svd")]
    rows = []
    for path in paths:
        model, conditioning, x0, img, runs = cases(path, args.videos)
        for steps, g in runs:
            if args.steps and steps not in args.steps:
                continue
            start = time.time()
            # one batch of all videos (a call counts once, the slowest video sets each step's count), or with
            # --per-video each video on its own, as the Invert nodes get one video: counts averaged over videos
            batches = [slice(k, k + 1) for k in range(len(x0))] if args.per_video else [slice(None)]
            counts, errs, calls, residuals, above = [], [], [], [], 0
            for b in batches:
                counter, cond = [0], conditioning(b)
                traj = pipeline.invert(model, cond, x0[b], steps, g, Solver(),
                                       image_latents=None if img is None else img[b], hooks=CountingHooks(counter))
                back = pipeline.sample(model, cond, traj.noise, steps, g,
                                       image_latents=None if img is None else img[b])
                counts.append(counter[0] / steps)
                errs += rel_err(back, x0[b])
                calls.append(list(traj.calls))
                residuals.append(float(max(traj.residuals)))
                above += len(traj.above_tolerance)
            seconds = time.time() - start
            calls = np.mean(calls, axis=0)
            rows.append({"model": path.name, "steps": steps,
                         "guidance": f"{g.first:g} -> {g.scale:g}" if g.first is not None else f"{g.scale:g}",
                         "rel_err": float(np.mean(errs)), "rel_err_max": float(np.max(errs)),
                         "calls_per_step": float(np.mean(counts)), "clean_end_calls": float(calls[0]),
                         "other_calls": float(np.mean(calls[1:])), "max_residual": max(residuals),
                         "above_tolerance": above, "seconds": seconds, "step_calls": calls.tolist(),
                         "calls_per_step_each": counts})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "step_calls"}), flush=True)
    return {"machine": machine(), "videos": args.videos, "per_video": args.per_video, "rows": rows}


def markdown(result: dict, command: str) -> str:
    batching = "each inverted on its own, counts averaged" if result.get("per_video") else "inverted as one batch"
    out = [f"Command: `{command}`  ", f"Machine: {result['machine']}; {result['videos']} held-out videos ({batching}), "
           "fp32.", "",
           "| model | steps | guidance | round trip (mean / max) | calls / step | clean end | others (mean) | "
           "largest residual | steps above tol. | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        out.append(f"| {r['model']} | {r['steps']} | {r['guidance']} | {r['rel_err']:.2e} / {r['rel_err_max']:.2e} | "
                   f"{r['calls_per_step']:.2f} | {r['clean_end_calls']:g} | {r['other_calls']:.2f} | "
                   f"{r['max_residual']:.1e} | {r['above_tolerance']} | {r['seconds']:.0f} |")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="*", default=[], help="model folders (default: the four bundled ones)")
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--steps", type=int, nargs="*", default=[], help="only these step counts")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--per-video", action="store_true",
                   help="invert each video on its own (as a node does) and average the counts, instead of one batch")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    result = run(args)
    command = f"python tools/bench_calls.py {' '.join(argv if argv is not None else sys.argv[1:])}".strip()
    print(markdown(result, command))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
