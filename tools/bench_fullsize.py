"""Full-size CogVideoX timings: seconds per step of plain vs guided sampling, and peak memory.

Random-weight transformers with the CogVideoX-2B and -5B architectures (the configs below
are the public ones: 30 blocks x 30 heads, absolute positions; 42 blocks x 48 heads, 3-D RoPE;
64-dim heads, 226 text tokens of 4096) sample a 49-frame 720x480 latent through the pack's own
samplers, CFG on. Weights do not change the cost, so random ones measure what trained ones
would. Meant for a GPU machine:

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

from vidinv.family import Guidance  # noqa: E402
from vidinv import attention, ddim, pipeline  # noqa: E402
from vidinv.models import cogvideox  # noqa: E402
from vidinv.trajectory import Trajectory  # noqa: E402

SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 rescale_betas_zero_snr=True, timestep_spacing="trailing", set_alpha_to_one=True,
                 prediction_type="v_prediction", clip_sample=False, steps_offset=0)
ARCHS = {  # transformer config, scheduler shift
    "2b": (dict(num_attention_heads=30, num_layers=30, use_rotary_positional_embeddings=False), 3.0),
    "5b": (dict(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True), 1.0),
}
COMMON = dict(attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512, text_embed_dim=4096,
              max_text_seq_length=226, sample_width=90, sample_height=60, sample_frames=49, patch_size=2)
SMOKE = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, time_embed_dim=32, text_embed_dim=24,
             max_text_seq_length=12, sample_width=8, sample_height=8, sample_frames=9)


def build(arch: str, device, dtype, smoke: bool) -> cogvideox.CogVideoX:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    over, shift = ARCHS[arch]
    cfg = {**COMMON, **over, **(SMOKE if smoke else {})}
    torch.manual_seed(0)
    with torch.device(device):
        transformer = CogVideoXTransformer3DModel(**cfg).to(dtype).eval().requires_grad_(False)
    vae = AutoencoderKLCogVideoX(block_out_channels=[8, 8, 8, 8], layers_per_block=1, latent_channels=16,
                                 norm_num_groups=4)  # only its config is read (latent size)
    params = sum(p.numel() for p in transformer.parameters())
    return cogvideox.CogVideoX(f"random CogVideoX-{arch.upper()} ({params / 1e9:.2f} B parameters)", "", transformer,
                               vae, None, None, {**SCHEDULER, "snr_shift_scale": shift}, dtype, torch.device(device),
                               torch.device(device), f"bench-{arch}")


def inputs(model, frames: int, height: int, width: int, steps: int):
    """A random edit conditioning and a random trajectory of the right shapes for `steps` steps."""
    c = model.tcfg
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, int(c["max_text_seq_length"]), int(c["text_embed_dim"]), generator=g)
    edit = cogvideox.Conditioning("edit", "", torch.randn(text.shape, generator=g), torch.zeros_like(text),
                                  model.fingerprint)
    lat_f = (frames - 1) // model.temporal_factor + 1
    shape = (steps + 1, 1, lat_f, model.latent_channels, height // model.spatial_factor, width // model.spatial_factor)
    schedule = ddim.schedule_from_config(model.scheduler_config)
    traj = Trajectory(latents=torch.randn(shape, generator=g), timesteps=ddim.timesteps(schedule, steps),
                      scheduler_config=model.scheduler_config, model_fingerprint=model.fingerprint,
                      model_name=model.name, prompt="source", negative_prompt="", embeds=text,
                      negative_embeds=torch.zeros_like(text), guidance=1.0, dynamic_cfg=False, iterations=0,
                      tolerance=0.0, residuals=[0.0] * steps, calls=[1] * steps)
    return edit, traj


def masked_attention(q, k, v, bias):
    """The alternative to the folded bias: a broadcast ``[1, 1, 1, L_k]`` mask (no flash kernel)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.device, q.dtype).view(1, 1, 1, -1))


def samplers(model) -> dict:
    """name -> (ReferenceOptions or None for plain sampling, start, the trajectory's inversion
    guidance: a trajectory inverted under CFG gets a reference row per CFG row)."""
    opts = attention.ReferenceOptions
    return {
        "plain": (None, "inverted", 1.0),
        "guided (defaults: every block and step)": (opts(), "inverted", 1.0),
        "guided, steps from 30 %": (opts(start=0.3), "inverted", 1.0),
        "guided, first half of the steps": (opts(end=0.5), "inverted", 1.0),
        "guided, blocks of the first half": (opts(blocks=f"-{int(model.tcfg['num_layers']) // 2}"), "inverted", 1.0),
        "guided, trajectory inverted under CFG (reference per CFG row)": (opts(), "inverted", 6.0),
        "published recipe (reference per CFG row)": (opts(reference_text="edit", text=True, weight=1.0), "fresh", 1.0),
    }


def runners(model, edit, traj, guidance: float) -> dict:
    def run(opts, start, inverted_guidance):
        if opts is None:
            return lambda: pipeline.sample(model, edit, traj.noise, traj.steps, guidance=Guidance(guidance))
        source = dataclasses.replace(traj, guidance=inverted_guidance)
        patched = pipeline.with_reference(model, source, opts)
        return lambda: pipeline.guided_sample(patched, edit, guidance=Guidance(guidance), start=start)

    return {name: run(*spec) for name, spec in samplers(model).items()}


def step_flops(model, edit, traj, guidance: float) -> dict:
    """FLOPs of one CFG sampling step per sampler, averaged over the trajectory's steps: the
    sample pass (CFG rows) plus, where the window is on, the reference pass."""
    from torch.utils.flop_counter import FlopCounterMode

    fam = cogvideox.FAMILY
    x = traj.noise
    text, _ = cogvideox.cfg_rows(edit, guidance, False, x.shape[0])
    grid = fam.grid(model, traj.steps)
    out = {}
    for name, (opts, _, inverted_guidance) in samplers(model).items():
        source, active, layers, call = traj, set(), (), None
        if opts is not None:
            source = dataclasses.replace(traj, guidance=inverted_guidance)
            layers = fam.reference_layers(model, opts)
            active = set(opts.active_steps(traj.steps))
            per_cfg_row = attention.reference_per_cfg_row(guidance > 1.0, inverted_guidance > 1.0, opts.rows)
            call = fam.reference_call(model, source, grid, edit, Guidance(guidance), opts, per_cfg_row, None)
        per_kind = {}  # a step costs the same as any other with the window in the same state
        for i, t in enumerate(traj.timesteps):
            if (i in active) not in per_kind:
                with FlopCounterMode(display=False) as counter, \
                        attention.installed(model.transformer, fam.reference_processors(model, layers)) as channel:
                    ctx = None if opts is None else attention.per_step(
                        channel, layers, source.latent_for_step, call, opts.weight, opts.rows, guidance > 1.0,
                        active.__contains__, opts.text)(i, x)
                    with ctx or contextlib.nullcontext():
                        cogvideox.transformer_call(model, torch.cat([x, x]), text, t, None)
                per_kind[i in active] = counter.get_total_flops()
        total = sum(per_kind[i in active] for i in range(traj.steps))
        out[name] = total / traj.steps
    return out


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
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
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
        tokens = traj.latents.shape[2] * traj.latents.shape[4] * traj.latents.shape[5] // model.patch_size ** 2
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
