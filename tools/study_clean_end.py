"""The clean-end inverse step (issue 22): how many model calls it needs to reach the tolerance, on
the bundled models and on tiny random CogVideoX models of other shapes, for a few ways to spend the
same calls (Anderson memory, the pooled budget's 200-refinement cap, plain iteration).

    python -m tools.study_clean_end [--steps 50] [--tol 1e-5]

The clean-end step solves ``x_t = (x_0 + sigma_t v(x_t, t)) / alpha_t``; its Jacobian is
``(sigma_t / alpha_t) dv/dx``. A model that denoises well at low noise predicts x_0 almost
independently of the noise in x_t, so along noise directions dv/dx ~ alpha_t / sigma_t and the
Jacobian's eigenvalues sit near 1: the fixed point is nearly undetermined there, and iteration
crawls. `gain` scales a random model's output projection to move it towards that regime.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from tests.tiny_models import write_tiny_model
from vidinv import ddim, solver, synthetic
from vidinv.models import cogvideox

VARIANTS = {  # name: (memory, refinements, damping; None = the node's automatic choice)
    # 200 is the node's per-step cap, 303 what the 50-step pool would leave the clean end without it
    "anderson 5, cap 200 (node)": (5, 200, None),
    "anderson 5, cap 303": (5, 303, None),
    "anderson 10, cap 200": (10, 200, None),
    "anderson 20, cap 200": (20, 200, None),
    "plain, cap 200": (0, 200, None),
    "anderson 5, cap 200, damping 1": (5, 200, 1.0),
    "anderson 10, cap 303": (10, 303, None),
    # issue 34: less memory, and over-relaxation (a step past G, which the node's damping input does not offer)
    "anderson 2, cap 200": (2, 200, None),
    "anderson 5, cap 200, over-relaxed 1.5": (5, 200, 1.5),
}


def deeper(model, layers: int, gain: float, seed: int = 1):
    """The model with a new random transformer of another depth and width, output scaled by `gain`."""
    from diffusers import CogVideoXTransformer3DModel
    cfg = dict(model.transformer.config)
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg.update(num_layers=layers, num_attention_heads=4, attention_head_dim=16)
    torch.manual_seed(seed)
    tr = CogVideoXTransformer3DModel(**cfg).eval().requires_grad_(False)
    with torch.no_grad():
        for p in tr.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        tr.proj_out.weight.mul_(gain)
        tr.proj_out.bias.mul_(gain)
    return dataclasses.replace(model, transformer=tr, name=f"{model.name} {layers} layers x{gain:g}",
                               fingerprint=model.fingerprint + f"-{layers}-{gain:g}")


def latents_for(model, count: int):
    if model.path.endswith("tiny-cogvideox") or model.path.endswith("tiny-cogvideox-i2v"):
        clips = [torch.from_numpy(synthetic.render(s)).float() for s in synthetic.heldout_specs(count)]
        x0 = torch.cat([cogvideox.encode_video(model, c) for c in clips])
        img = torch.cat([cogvideox.encode_image_latents(model, c, x0.shape[1]) for c in clips]) if model.is_i2v \
            else None
        return x0, img
    g = torch.Generator().manual_seed(0)
    h = int(model.transformer.config.sample_height)
    x0 = torch.randn(count, 2, model.latent_channels, h, h, generator=g)
    img = torch.randn(x0.shape, generator=g) if model.is_i2v else None
    return x0, img


def study(model, steps: int, tol: float, count: int, guidances=(1.0, 6.0), variants=()) -> list[str]:
    cond = cogvideox.encode_text(model, "a red circle moving right", "")
    x0, img = latents_for(model, count)
    schedule = ddim.schedule_from_config(model.scheduler_config)
    t, p = ddim.grid(schedule, steps)[-1]
    a, b = ddim.coefficients(schedule, t, p)
    rows = []
    for guidance in guidances:
        den = cogvideox.make_denoiser(model, cond, guidance, False, steps, img)
        for name, (memory, refinements, damping) in VARIANTS.items():
            if variants and name not in variants:
                continue
            start = time.perf_counter()
            damping = damping or solver.auto_damping(guidance > 1.0)
            _, st = solver.invert_step(x0, den, t, a, b, refinements, tol, damping, memory)
            reached = next((k + 2 for k, r in enumerate(st.history) if r <= tol), None)
            rows.append(f"| {model.name} | {guidance:g} | {name} | {st.residual:.2e} | "
                        f"{reached if reached else f'not in {st.calls}'} | {time.perf_counter() - start:.0f} |")
            print(rows[-1], flush=True)
    return rows


def spectrum(model, steps: int, count: int, calls: int = 60) -> None:
    """Where the clean end's slow residual lives (issue 34: is there a basis in which a diagonal
    preconditioner would help?): plain fixed-point iteration in float64 at guidance 1, then the decay
    per iteration over the last 10 of the residual's energy per (latent channel, radial frequency band
    of the H x W Fourier transform) and per latent position, and the share of the energy in the top
    tenth of the positions."""
    x0, img = latents_for(model, count)
    x0, img = x0.double(), None if img is None else img.double()
    model = dataclasses.replace(model, dtype=torch.float64, transformer=model.transformer.double())
    cond = cogvideox.encode_text(model, "a red circle moving right", "")
    schedule = ddim.schedule_from_config(model.scheduler_config)
    t, p = ddim.grid(schedule, steps)[-1]
    a, b = ddim.coefficients(schedule, t, p)
    den = cogvideox.make_denoiser(model, cond, 1.0, False, steps, img)
    h, w = x0.shape[-2:]
    radius = (torch.fft.fftfreq(h).view(h, 1) ** 2 + torch.fft.rfftfreq(w).view(1, -1) ** 2).sqrt()
    bands = torch.bucketize(radius, torch.tensor([0.05, 0.15, 0.3, 0.45]))  # 5 radial bands
    x, per_group, per_position = x0, [], []
    for _ in range(calls):
        gx = (x0 - b * den(x, t).double()) / a
        r, x = gx - x, gx
        energy = torch.fft.rfft2(r).abs() ** 2  # [B, F, C, h, w//2+1]
        per_group.append(torch.stack([(energy * (bands == k)).sum((0, 1, 3, 4)) for k in range(5)], 1))
        per_position.append((r ** 2).sum(2))
    decay = lambda e: ((e[-1] / e[-11]) ** 0.05).flatten().float()  # noqa: E731  sqrt of energy, per iteration
    q = torch.tensor([0.0, 0.5, 1.0])
    top = per_position[-1].flatten().sort(descending=True).values
    print(f"{model.name}, {count} videos, relative residual after {calls} calls "
          f"{float(r.norm() / gx.norm()):.2e}: decay per call (min / median / max) by (channel, band) "
          f"{', '.join(f'{v:.3f}' for v in decay(torch.stack(per_group)).quantile(q))}; by position "
          f"{', '.join(f'{v:.3f}' for v in decay(torch.stack(per_position)).quantile(q))}; top tenth of the "
          f"positions holds {float(top[:len(top) // 10].sum() / top.sum()):.0%} of the energy")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--constructed", action="store_true", help="only the constructed (deeper, scaled) models")
    ap.add_argument("--bundled", action="store_true", help="only the bundled models")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 6.0])
    ap.add_argument("--variants", nargs="*", default=[], help="names from VARIANTS (default: all)")
    ap.add_argument("--spectrum", action="store_true", help="only where the slow residual lives (bundled T2V)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parents[1]
    if args.spectrum:
        return spectrum(cogvideox.load(root / "assets" / "tiny-cogvideox"), args.steps, args.videos)
    tmp = Path(tempfile.mkdtemp(prefix="clean-end-"))
    bundled = cogvideox.load(root / "assets" / "tiny-cogvideox")
    models = [bundled, cogvideox.load(root / "assets" / "tiny-cogvideox-i2v")]
    models += [cogvideox.load(write_tiny_model(tmp / v, v), name=f"random {v}") for v in ("2b", "5b", "1.5")]
    random5b = models[3]
    models += [deeper(random5b, 4, 1.0), deeper(random5b, 4, 20.0), deeper(bundled, 3, 10.0)]
    if args.constructed:
        models = models[-3:]
    if args.bundled:
        models = models[:2]
    print(f"clean-end step of a {args.steps}-step grid, tolerance {args.tol:g}, {args.videos} videos per batch")
    print("| model | guidance | solver, refinements | residual | calls to the tolerance | s |")
    print("|---|---|---|---|---|---|")
    for model in models:
        study(model, args.steps, args.tol, args.videos, args.guidance, args.variants)


if __name__ == "__main__":
    main()
