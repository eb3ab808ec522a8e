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
import contextlib
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

from tests import twopass  # noqa: E402
from tests.fullsize_models import ARCHS, NETWORK_CALLS, WAN_ARCHS, build, inputs, samplers, step_flops  # noqa: E402
from tools.memcount import LiveBytes, flash_attention  # noqa: E402
from vidinv.family import Guidance  # noqa: E402
from vidinv import attention, families, pipeline  # noqa: E402

SCHEDULES = {"two-pass (before)": twopass.guided, "lockstep (after)": attention.guided}


@contextlib.contextmanager
def schedule(name: str):
    """Guided calls with the old two-pass schedule or the lockstep one (`tests/twopass.py`)."""
    original = attention.guided
    attention.guided = SCHEDULES[name]
    try:
        yield
    finally:
        attention.guided = original


def step_memory(model, edit, traj, guidance: float) -> dict:
    """(sampler, schedule) -> (peak bytes of the tensors one guided step's network calls make, the
    most reference K/V bytes alive when the sample call takes a layer), counted at an active step
    with `tools.memcount.LiveBytes` and fused attention (on the meta device: no memory, no
    arithmetic). Plain sampling has one entry, under every schedule."""
    fam = families.of(model)
    x = traj.noise
    network_call = NETWORK_CALLS[fam.name]
    text = network_call["rows"](edit, guidance, x.shape[0])
    rows = torch.cat([x, x]) if guidance > 1.0 else x
    grid = fam.grid(model, traj.steps)
    out = {}
    for name, (opts, _, inverted_guidance) in samplers(model).items():
        if opts is not None and inverted_guidance > 1.0 and guidance <= 1.0:
            continue  # a reference row per CFG row needs a CFG sample
        for sched in SCHEDULES:
            source, layers = traj, ()
            i = 0
            if opts is not None:
                source = dataclasses.replace(traj, guidance=inverted_guidance)
                layers = fam.reference_layers(model, opts)
                active = opts.active_steps(traj.steps)
                i = active[0]
                per_cfg_row = attention.reference_per_cfg_row(guidance > 1.0, inverted_guidance > 1.0, opts.rows)
                call = fam.reference_call(model, source, grid, edit, Guidance(guidance), opts, per_cfg_row, None)
            with schedule(sched), flash_attention(), twopass.HeldKV() as held, LiveBytes() as live, \
                    attention.installed(fam.networks(model), fam.reference_processors(model, layers)) as channel:
                ctx = None if opts is None else attention.per_step(
                    channel, layers, source.latent_for_step, call, opts.weight, opts.rows, guidance > 1.0,
                    None, opts.text)(i, x)
                with ctx or contextlib.nullcontext():
                    network_call["call"](model, rows, text, traj.timesteps[i])
            out[name, sched] = (live.peak, max(held.alive_bytes, default=0))
    return out


def memory_table(model, edit, traj, guidance: float, rows: list, arch: str) -> None:
    """Print and keep the counted memory (and FLOPs) of plain and guided sampling, before and after."""
    weights = sum(p.numel() * p.element_size() for p in model.transformer.parameters())
    mem = step_memory(model, edit, traj, guidance)
    flops = {}
    for sched in SCHEDULES:
        with schedule(sched):
            flops[sched] = step_flops(model, edit, traj, guidance)
    plain_total = weights + mem["plain", next(iter(SCHEDULES))][0]
    gib = 2 ** 30
    print(f"weights {weights / gib:.2f} GiB; plain: peak activations {(plain_total - weights) / gib:.2f} GiB, "
          f"weights + activations {plain_total / gib:.2f} GiB\n")
    print("| sampler | schedule | stored ref. K/V GiB | peak activations GiB | weights + activations GiB "
          "| x plain | TFLOP per step |\n|---|---|---|---|---|---|---|")
    for (name, sched), (peak, kv) in mem.items():
        if name == "plain" and sched != next(iter(SCHEDULES)):
            continue
        total = weights + peak
        f = flops[sched][name]
        print(f"| {name} | {'-' if name == 'plain' else sched} | {kv / gib:.2f} | {peak / gib:.2f} | {total / gib:.2f} "
              f"| {total / plain_total:.3f} | {f / 1e12:.1f} |", flush=True)
        rows.append({"arch": arch, "sampler": name, "schedule": sched, "guidance": guidance, "weights_bytes": weights,
                     "peak_activation_bytes": peak, "stored_kv_bytes": kv, "total_ratio": total / plain_total,
                     "flops_per_step": f})


def masked_attention(q, k, v, bias, k_ref=None, v_ref=None):
    """The alternative to the folded bias: a broadcast ``[1, 1, 1, L_k]`` mask (no flash kernel)."""
    k, v = attention.joined(k, k_ref), attention.joined(v, v_ref)
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
    ap.add_argument("--memory", action="store_true",
                    help="count stored reference K/V, peak activations and FLOPs of one step, before (two-pass) and "
                         "after (lockstep), on the meta device (no GPU needed)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes, to test this script on a CPU")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.smoke:
        args.frames, args.height, args.width, args.steps = 9, 64, 64, 2
    if args.flops or args.memory:
        args.device, args.steps = "meta", 50  # the windows at the usual step count
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    dev = torch.device(args.device)
    gpu = (torch.cuda.get_device_name(dev) if dev.type == "cuda" else "meta device (FLOP count)" if dev.type == "meta"
           else platform.processor() or platform.machine())
    print(f"# {gpu}, torch {torch.__version__}, {args.dtype}, {args.frames} frames {args.width}x{args.height}, "
          f"guidance {args.guidance} (CFG {'on' if args.guidance > 1 else 'off'}), {args.steps} steps per run")
    rows = []
    for arch in args.archs:
        model = build(arch, dev, dtype, args.smoke)
        weights = torch.cuda.memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
        edit, traj = inputs(model, args.frames, args.height, args.width, args.steps)
        p = model.patch_size
        pt, ph, pw = (1, p, p) if isinstance(p, int) else p  # CogVideoX: one spatial size; Wan: (t, h, w)
        tokens = traj.latents.shape[2] // pt * (traj.latents.shape[4] // ph) * (traj.latents.shape[5] // pw)
        if args.memory:
            print(f"\n## {model.name}: {tokens} image tokens per row, guidance {args.guidance}\n")
            memory_table(model, edit, traj, args.guidance, rows, arch)
            continue
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
