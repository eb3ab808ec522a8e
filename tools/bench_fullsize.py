"""Full-size CogVideoX and Wan timings: seconds per step of plain vs guided sampling, and peak memory.

Random-weight transformers with the CogVideoX-2B and -5B architectures (tests/fullsize_models.py;
the configs are the public ones: 30 blocks x 30 heads, absolute positions; 42 blocks x 48 heads,
3-D RoPE; 64-dim heads, 226 text tokens of 4096) sample a 49-frame 720x480 latent through the
pack's own samplers, CFG on; ``--archs wan-1.3b wan-14b --frames 81 --width 832`` does the same for
the Wan 2.1 T2V architectures (30 blocks x 12 heads, 40 x 40; 128-dim heads, 512 text tokens). Weights do not change the cost, so random ones measure what trained
ones would. Meant for a GPU machine:

    python tools/bench_fullsize.py --device cuda --json fullsize.json

``--flops`` needs no GPU: it builds the models on PyTorch's meta device (no memory, no
arithmetic) and counts the floating-point operations of one step of each sampler, averaged
over the steps, with `torch.utils.flop_counter`. At this size the GPU is compute-bound, so the
FLOP ratio is what the time ratio tends to. ``--smoke`` runs the timing code on a toy size
(CPU, seconds) to check the script itself.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fullsize_models import ARCHS, WAN_ARCHS, build, inputs, samplers, step_flops  # noqa: E402
from vidinv.family import Guidance  # noqa: E402
from vidinv import attention, pipeline  # noqa: E402


def masked_attention(q, k, v, bias):
    """The alternative to the folded bias: a broadcast ``[1, 1, 1, L_k]`` mask (no flash kernel)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.device, q.dtype).view(1, 1, 1, -1))


def runners(model, edit, traj, guidance: float) -> dict:
    def run(opts, start, inverted_guidance):
        if opts is None:
            return lambda: pipeline.sample(model, edit, traj.noise, traj.steps, Guidance(guidance))
        source = dataclasses.replace(traj, guidance=inverted_guidance)
        patched = pipeline.with_reference(model, source, opts)
        return lambda: pipeline.guided_sample(patched, edit, Guidance(guidance), start=start)

    return {name: run(*spec) for name, spec in samplers(model).items()}


def measure(fn, device) -> tuple[float, float]:
    """Seconds and peak memory (GiB, CUDA only) of one run."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return seconds, peak


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=[*ARCHS, *WAN_ARCHS])
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=720)
    ap.add_argument("--steps", type=int, default=4, help="sampling steps per timed run")
    ap.add_argument("--guidance", type=float, default=6.0)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--compare-mask", action="store_true",
                    help="also time the guided defaults with a broadcast attention mask instead of the folded bias")
    ap.add_argument("--flops", action="store_true", help="count FLOPs per step on the meta device (no GPU needed)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes, to test this script on a CPU")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.smoke:
        args.frames, args.height, args.width, args.steps = 9, 64, 64, 2
    if args.flops:
        args.device, args.steps = "meta", 50  # the windows at the usual step count
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    dev = torch.device(args.device)
    gpu = (torch.cuda.get_device_name(dev) if dev.type == "cuda" else "meta device (FLOP count)" if dev.type == "meta"
           else platform.processor() or platform.machine())
    print(f"# {gpu}, torch {torch.__version__}, {args.dtype}, {args.frames} frames {args.width}x{args.height}, "
          f"guidance {args.guidance} (CFG on), {args.steps} steps per run")
    rows = []
    for arch in args.archs:
        model = build(arch, dev, dtype, args.smoke)
        weights = torch.cuda.memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
        edit, traj = inputs(model, args.frames, args.height, args.width, args.steps)
        p = model.patch_size
        pt, ph, pw = (1, p, p) if isinstance(p, int) else p  # CogVideoX: one spatial size; Wan: (t, h, w)
        tokens = traj.latents.shape[2] // pt * (traj.latents.shape[4] // ph) * (traj.latents.shape[5] // pw)
        if args.flops:
            flops = step_flops(model, edit, traj, args.guidance)
            print(f"\n## {model.name}: {tokens} image tokens per row\n")
            print("| sampler | TFLOP per step | x plain |\n|---|---|---|")
            for name, f in flops.items():
                print(f"| {name} | {f / 1e12:.1f} | {f / flops['plain']:.2f} |")
                rows.append({"arch": arch, "sampler": name, "flops_per_step": f, "ratio": f / flops["plain"]})
            continue
        runs = runners(model, edit, traj, args.guidance)
        if args.compare_mask:
            original = attention.attend_with_key_bias

            def with_mask(fn=runs["guided (defaults: every block and step)"]):
                attention.attend_with_key_bias = masked_attention
                try:
                    return fn()
                finally:
                    attention.attend_with_key_bias = original
            runs["guided defaults, broadcast mask"] = with_mask
        print(f"\n## {model.name}: {tokens} image tokens per row, weights {weights:.1f} GiB\n")
        print("| sampler | s/step | x plain | peak GiB |")
        print("|---|---|---|---|")
        for name in ("plain", "guided (defaults: every block and step)"):  # warm-up: kernels, allocator
            runs[name]()
        base = None
        for name, fn in runs.items():
            try:
                seconds, peak = measure(fn, dev)
            except torch.OutOfMemoryError:
                print(f"| {name} | out of memory | | |")
                rows.append({"arch": arch, "sampler": name, "oom": True})
                torch.cuda.empty_cache()
                continue
            per_step = seconds / args.steps
            base = base or per_step
            print(f"| {name} | {per_step:.3f} | {per_step / base:.2f} | {peak:.1f} |", flush=True)
            rows.append({"arch": arch, "sampler": name, "s_per_step": per_step, "ratio": per_step / base,
                         "peak_gib": peak, "weights_gib": weights, "tokens": tokens})
        del model, runs
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps({"device": gpu, "torch": torch.__version__, "args": {
            k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
