"""Peak tensor memory of plain vs guided sampling on mid-size random CogVideoX-5B- and Wan-2.1-shaped
transformers, on the CPU, through the pack's own samplers (`vidinv.pipeline.sample` / `guided_sample`).

Counted with `tools.memcount.LiveBytes` (a dispatch mode: the bytes of every storage the sampling
call makes, from its creation to its release, in every thread; the weights and inputs that existed
before are not counted, nor kernel scratch or allocator overhead), so the numbers are bytes
allocated by tensors, not the process's RSS. Reference attention at its defaults (every block and
step), with a trajectory inverted at guidance 1 (one reference row) and one inverted under CFG (a
reference row per CFG row), sampled at CFG guidance 6.

    python tools/bench_memory.py --threads 1 [--schedule lockstep|two-pass] [--root CHECKOUT]

`--schedule two-pass` runs the old schedule (`tests/twopass.py`, swapped in for `attention.guided`);
`--root` imports the library from another checkout (e.g. the commit before issue 34) to measure its
own code.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

ARCHS = {  # mid-size: the 5B / Wan 2.1 layouts with fewer, narrower blocks
    "cogvideox": dict(num_attention_heads=8, attention_head_dim=64, num_layers=12, use_rotary_positional_embeddings=True,
                      time_embed_dim=512, text_embed_dim=256, max_text_seq_length=32),
    "wan": dict(num_attention_heads=8, attention_head_dim=64, ffn_dim=1536, num_layers=12, text_dim=256, freq_dim=64),
}


def build(arch: str, frames: int, size: int):
    from diffusers import (AutoencoderKLCogVideoX, AutoencoderKLWan, CogVideoXTransformer3DModel,
                           WanTransformer3DModel)
    from tests.fullsize_models import COMMON, SCHEDULER, WAN_COMMON
    from vidinv.models import cogvideox, wan
    torch.manual_seed(0)
    if arch == "wan":
        tr = WanTransformer3DModel(**{**WAN_COMMON, **ARCHS[arch]}).eval().requires_grad_(False)
        vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1])
        return wan.Wan("mid-size Wan", "", tr, vae, None, None, {"num_train_timesteps": 1000, "shift": 3.0},
                       torch.float32, torch.device("cpu"), torch.device("cpu"), "mid-wan")
    cfg = {**COMMON, **ARCHS[arch], "sample_frames": frames, "sample_height": size, "sample_width": size}
    tr = CogVideoXTransformer3DModel(**cfg).eval().requires_grad_(False)
    vae = AutoencoderKLCogVideoX(block_out_channels=[8, 8, 8, 8], layers_per_block=1, latent_channels=16,
                                 norm_num_groups=4)
    return cogvideox.CogVideoX("mid-size CogVideoX", "", tr, vae, None, None, {**SCHEDULER, "snr_shift_scale": 1.0},
                               torch.float32, torch.device("cpu"), torch.device("cpu"), "mid-cogvideox")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--frames", type=int, default=25, help="video frames (latent frames: (n - 1) / 4 + 1)")
    ap.add_argument("--size", type=int, default=256, help="pixels per side")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--guidance", type=float, default=6.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--schedule", default="lockstep", choices=["lockstep", "two-pass"])
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout whose library is measured")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    sys.path[:0] = [str(args.root), str(ROOT)]  # the measured library first, this checkout's tools after it
    torch.set_num_threads(args.threads)
    from tools.memcount import LiveBytes
    from tests.fullsize_models import inputs
    from vidinv import attention, pipeline
    from vidinv.family import Guidance
    own = args.root.resolve() == ROOT
    schedule = args.schedule if own else "the library's own"
    if args.schedule == "two-pass" and own:
        from tests import twopass
        attention.guided = twopass.guided
    print(f"# CPU, {args.threads} thread(s), torch {torch.__version__}, fp32, {args.frames} frames "
          f"{args.size}x{args.size}, {args.steps} steps, guidance {args.guidance}, library {args.root}, "
          f"schedule: {schedule}")
    rows = []
    for arch in args.archs:
        model = build(arch, args.frames, args.size)
        edit, traj = inputs(model, args.frames, args.size, args.size, args.steps)
        layers = model.transformer.config.num_layers
        weights = sum(p.numel() * p.element_size() for p in model.transformer.parameters())
        print(f"\n## {model.name}: {layers} blocks, weights {weights / 2**20:.0f} MiB\n")
        print("| sampler | peak tensor MiB | x plain | s |\n|---|---|---|---|")
        runs = {"plain": lambda: pipeline.sample(model, edit, traj.noise, traj.steps, Guidance(args.guidance))}
        for label, inverted in (("guided, g1 trajectory", 1.0), ("guided, CFG trajectory (row per CFG row)", 6.0)):
            patched = pipeline.with_reference(model, dataclasses.replace(traj, guidance=inverted))
            runs[label] = lambda p=patched: pipeline.guided_sample(p, edit, Guidance(args.guidance))
        base = None
        for label, run in runs.items():
            t0 = time.perf_counter()
            with torch.inference_mode(), LiveBytes() as live:
                run()
            seconds = time.perf_counter() - t0
            base = base or live.peak
            print(f"| {label} | {live.peak / 2**20:.1f} | {live.peak / base:.2f} | {seconds:.1f} |", flush=True)
            rows.append({"arch": arch, "sampler": label, "peak_bytes": live.peak, "seconds": seconds,
                         "weights_bytes": weights, "schedule": schedule, "root": str(args.root)})
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
