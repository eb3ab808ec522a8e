"""Edit benchmark for Stable Video Diffusion on the bundled tiny SVD: the first frame is edited
(recoloured, or the shape redrawn) and the edit is propagated through the video; the same metrics
and table layout as the CogVideoX benchmark (tools/bench_edit.py).

    python tools/bench_svd_edit.py [--videos 8] [--speed-only] [--json results.json]

Each held-out video is inverted with its own first frame and motion bucket (exact Euler inversion,
frame-wise guidance 1 -> 1). The edited first frame is the generator's frame 0 of the edited video
(what an image editor would give). Metrics on the decoded edit, as for CogVideoX: target attribute
hit, direction kept, foreground-mask IoU and centroid path error against the source's VAE
reconstruction. Methods:
  ground truth     the edited video drawn by the generator, through the VAE: the metrics' ceiling
  fresh noise      plain SVD from the edited first frame (what image-to-video gives without inversion)
  sdedit s         the source noised to strength s, then plain sampling from the edited first frame
  naive            the naive Euler inverse (no refinement), plain sampling from the edited frame
  exact            exact inversion, plain sampling from the edited frame (no injection)
  ours ...         exact inversion + reference attention (a sweep of weight, window, temporal, rows)
  node defaults    Reference Attention + Guided Sample at their node defaults (SVD: weight 2 in the first 40 %
                   of the steps, from the inverted noise; no mask, which needs a prompt)
  edit-friendly    edit-friendly DDPM inversion (guidance 1 -> 1, seed 0), the edit sampled with its
                   noise maps by ancestral Euler (`vidinv.friendly`); "+ ours w=4": with reference
                   attention (weight 4)
Also: plain vs guided sampling time with CFG on (guidance 1 -> 3), and the peak memory of both.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.benchkit import (NODE_DEFAULTS, edit_markdown, edit_rows, edited_spec, machine, node_defaults,  # noqa: E402
                            reconstruction_rows, report, score_frames, time_samplers)
from vidinv.family import Guidance  # noqa: E402
from vidinv.solver import Solver  # noqa: E402
from vidinv import pipeline, synthetic  # noqa: E402
from vidinv.attention import ReferenceOptions  # noqa: E402
from vidinv.fixture import BUCKETS, first_frame_conditioning  # noqa: E402
from vidinv.models import svd  # noqa: E402

OURS_SWEEP = {
    "ours w=1": ReferenceOptions(weight=1.0),
    "ours w=2": ReferenceOptions(weight=2.0),
    "ours w=4": ReferenceOptions(weight=4.0),
    "ours w=8": ReferenceOptions(weight=8.0),
    "ours w=1 + temporal": ReferenceOptions(weight=1.0, temporal=True),
    "ours w=4 + temporal": ReferenceOptions(weight=4.0, temporal=True),
    "ours w=4 start=0.3": ReferenceOptions(weight=4.0, start=0.3),
    "ours w=4 end=0.5": ReferenceOptions(weight=4.0, end=0.5),
    "ours w=4 cond-rows": ReferenceOptions(weight=4.0, rows="conditional"),
}
SPEED = {"guided w=4": ReferenceOptions(weight=4.0),
         "guided w=4 + temporal": ReferenceOptions(weight=4.0, temporal=True),
         "guided w=4 end=0.5": ReferenceOptions(weight=4.0, end=0.5)}


def sdedit(model, cond, x0, steps, guidance, strength, seed=0):
    """Noise the clean latent to the grid's sigma at `strength` and sample the rest of the grid."""
    grid = svd.grid_for(model, steps)
    start = min(steps - 1, int(round(steps * (1 - strength))))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    return pipeline.sample(model, cond, x0 + grid.sigmas[start] * noise, steps,
                           Guidance(guidance[1], first=guidance[0]), start=start)


def fresh(model, cond, x0, steps, guidance, seed=0):
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    return pipeline.sample(model, cond, noise * svd.initial_sigma(model, steps), steps,
                           Guidance(guidance[1], first=guidance[0]))


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    model = svd.load(args.model, "fp32")
    f = model.native_frames
    specs = [dataclasses.replace(s, frames=f) for s in synthetic.heldout_specs(args.videos)]
    videos = [torch.from_numpy(synthetic.render(s)) for s in specs]
    x0 = torch.cat([svd.encode_video(model, v) for v in videos])
    h, w = videos[0].shape[1:3]

    def decode(z):
        return svd.decode_video(model, z).numpy().reshape(len(specs), f, h, w, 3)

    def conditioning(frames):
        return first_frame_conditioning(model, torch.stack([v[0] for v in frames]),
                                        [BUCKETS[s.direction] for s in specs], seed=0)

    recon = decode(x0)
    src = conditioning(videos)
    steps, g1 = args.steps, (1.0, 1.0)
    start = time.time()
    exact = pipeline.invert(model, src, x0, steps, Guidance(g1[1], first=g1[0]), Solver(iters=10, tol=1e-5))
    invert_seconds = time.time() - start
    naive = pipeline.invert(model, src, x0, steps, Guidance(g1[1], first=g1[0]), Solver(iters=0))
    ef = pipeline.invert_friendly(model, src, x0, steps, Guidance(g1[1], first=g1[0]), seed=0)
    results = {"model": model.describe(), "machine": machine(), "videos": len(specs), "steps": steps,
               "inversion": {"seconds": invert_seconds, "calls_per_step": float(np.mean(exact.calls)),
                             "max_residual": float(max(exact.residuals))}, "tables": []}

    def guided(cond, opts, guidance, traj=exact):
        return pipeline.guided_sample(pipeline.with_reference(model, traj, opts), cond,
                                      Guidance(guidance[1], first=guidance[0]))

    def friendly(cond, guidance):
        return pipeline.sample(model, cond, ef.noise, steps, Guidance(guidance[1], first=guidance[0]),
                               noise_maps=ef.noise_maps)

    recon_rows = {"naive plain": pipeline.sample(model, src, naive.noise, steps, Guidance(g1[1], first=g1[0])),
                  "exact plain": pipeline.sample(model, src, exact.noise, steps, Guidance(g1[1], first=g1[0])),
                  "ours w=4": guided(src, ReferenceOptions(weight=4.0), g1),
                  NODE_DEFAULTS: node_defaults(model, exact, src, Guidance(g1[1], first=g1[0])),
                  "ours w=4 + temporal": guided(src, ReferenceOptions(weight=4.0, temporal=True), g1),
                  "edit-friendly": friendly(src, g1),
                  "edit-friendly + ours w=4": guided(src, ReferenceOptions(weight=4.0), g1, ef)}
    results["reconstruction"] = reconstruction_rows(recon_rows, x0, recon, decode)

    for kind in ("colour", "shape"):
        targets = [edited_spec(s, kind) for s in specs]
        target_videos = [torch.from_numpy(synthetic.render(t)) for t in targets]
        edit = conditioning(target_videos)
        for gmax in args.max_guidance:
            g = (args.min_guidance, gmax)
            methods = {
                "ground truth (VAE)": lambda: torch.cat([svd.encode_video(model, v) for v in target_videos]),
                "fresh noise": lambda: fresh(model, edit, x0, steps, g),
                **{f"sdedit {s}": (lambda s=s: sdedit(model, edit, x0, steps, g, s)) for s in args.sdedit},
                "naive": lambda: pipeline.sample(model, edit, naive.noise, steps, Guidance(g[1], first=g[0])),
                "exact": lambda: pipeline.sample(model, edit, exact.noise, steps, Guidance(g[1], first=g[0])),
                **{name: (lambda o=o: guided(edit, o, g)) for name, o in OURS_SWEEP.items()},
                NODE_DEFAULTS: lambda: node_defaults(model, exact, edit, Guidance(g[1], first=g[0])),
                "edit-friendly": lambda: friendly(edit, g),
                "edit-friendly + ours w=4": lambda: guided(edit, ReferenceOptions(weight=4.0), g, ef),
            }
            methods = {name: fn for name, fn in methods.items() if not args.methods or name in args.methods}
            rows = edit_rows(methods, lambda z: score_frames(decode(z), specs, targets, kind, recon),
                             {"edit": kind, "guidance": list(g)})
            results["tables"].append({"edit": kind, "guidance": list(g), "rows": rows})

    if args.methods:
        return results
    # speed and memory: plain vs guided with CFG on
    edit = conditioning([torch.from_numpy(synthetic.render(edited_spec(s, "colour"))) for s in specs])
    g = (args.min_guidance, args.speed_guidance)
    timing = time_samplers({"plain": lambda: pipeline.sample(model, edit, exact.noise, steps, Guidance(g[1], first=g[0])),
                            **{n: (lambda o=o: guided(edit, o, g)) for n, o in SPEED.items()}}, args.repeats)
    results["speed"] = {"guidance": list(g), "repeats": args.repeats, "samplers": timing}
    return results


def markdown(result: dict, command: str) -> str:
    inv = result["inversion"]
    return edit_markdown(
        result, command, f" Exact inversion (guidance 1 -> 1): {inv['calls_per_step']:.2f} UNet calls per step, "
        f"largest step residual {inv['max_residual']:.1e}, {inv['seconds']:.1f} s.", "the source first frame",
        "edits of the first frame")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "assets" / "tiny-svd"))
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--min-guidance", type=float, default=1.0)
    p.add_argument("--max-guidance", type=float, nargs="+", default=[1.0, 3.0])
    p.add_argument("--sdedit", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    p.add_argument("--speed-guidance", type=float, default=3.0, help="max guidance of the speed runs")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--speed-only", action="store_true", help="skip the edit tables (reconstruction and speed only)")
    p.add_argument("--methods", nargs="*", default=[], help="only these edit rows (then no speed runs); all when "
                   "empty")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.speed_only:
        args.max_guidance = []
    report(run(args), markdown, "bench_svd_edit.py", argv, args.json)


if __name__ == "__main__":
    main()
