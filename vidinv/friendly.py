"""Edit-friendly DDPM inversion (Huberman-Spiegelglas, Kulikov & Michaeli, "An Edit Friendly DDPM
Noise Space", CVPR 2024; the inversion under LEDITS++), written once for every grid of
`vidinv.solver`, as pure functions over a denoiser.

A grid whose latents sit at ``x_k = alpha_k clean + s_k noise`` (`solver.Grid.levels`: CogVideoX's
sqrt(alpha-bar) and sqrt(1 - alpha-bar), SVD's 1 and sigma, Wan's 1 - sigma and sigma) has a
stochastic sampler besides its deterministic one: the DDPM posterior q(x_next | x, clean) with the
model's clean estimate in place of the clean latent::

    x_next = alpha_n x0_hat + sqrt(s_n^2 - c^2) eps_hat + c z,    c^2 = eta^2 s_n^2 (1 - (alpha s_n / (alpha_n s))^2)

(eta = 1: DDPM, CogVideoX's v-prediction posterior on its DDIM grid, SVD's ancestral Euler step,
Wan's flow posterior; eta = 0: the deterministic grid itself). With ``x0_hat = c_x x + c_out out``
and ``eps_hat = (x - alpha x0_hat) / s`` its mean is affine in (x, out) like every step of the pack:
`posterior` gives its coefficients.

**Inversion** (Algorithm 1 of the paper): draw every latent of the grid independently from
q(x_k | clean) (`noisy_latents`), then solve each step's noise map from
``x_next = mean(x, out(x)) + r``: ``r = x_next - mean``. One model call per step, no iteration.
**Sampling** with those maps, ``x_next = mean(x, out(x)) + r``, reproduces every latent of the
inversion, and the clean latent, by construction (to float rounding) when the denoiser is the same;
with another prompt it edits, the maps holding the source's structure. The maps are stored with
their scale (``r = c z``), so the last step, whose posterior has no noise (c = 0), still carries what
the model's clean estimate missed.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from . import errors, solver
from .solver import Denoiser, Grid, require_finite, working

KIND = "edit-friendly"  # the trajectory kind (`vidinv.trajectory.Trajectory.kind`)


@dataclasses.dataclass(frozen=True)
class Posterior:
    """One stochastic step: mean ``a x + b out``, noise scale `c` (the standard deviation)."""
    a: float
    b: float
    c: float


def posterior(grid: Grid, eta: float = 1.0) -> tuple[Posterior, ...]:
    """The DDPM posterior step (eta = 1) of every point of `grid`, noisiest first; eta = 0 gives the
    grid's own deterministic steps."""
    if grid.levels is None:
        raise errors.InputError(f"the {grid.kind} grid does not say where its latents sit (alpha, s)",
                                "This sampler has no edit-friendly inversion.")
    if not (math.isfinite(eta) and 0.0 <= eta <= 1.0):
        raise errors.InputError(f"eta {eta!r} is not in 0..1", "Use 1 (DDPM) or less.")
    out = []
    for step, (alpha, s), (alpha_n, s_n) in zip(grid.points, grid.levels, grid.levels[1:]):
        ratio = alpha * s_n / (alpha_n * s) if alpha_n > 0 else 0.0
        var = min(max(eta ** 2 * s_n ** 2 * (1.0 - ratio ** 2), 0.0), s_n ** 2)
        d = math.sqrt(s_n ** 2 - var)
        cx, co = step.x0
        out.append(Posterior(alpha_n * cx + d * (1.0 - alpha * cx) / s, alpha_n * co - d * alpha * co / s,
                             math.sqrt(var)))
    return tuple(out)


def stochastic_grid(grid: Grid, eta: float = 1.0) -> Grid:
    """`grid` with every step's (a, b) replaced by its posterior mean's (the noise is added apart)."""
    return dataclasses.replace(grid, points=tuple(dataclasses.replace(s, a=p.a, b=p.b)
                                                  for s, p in zip(grid.points, posterior(grid, eta))))


def noisy_latents(x0: torch.Tensor, grid: Grid, generator: torch.Generator) -> list[torch.Tensor]:
    """``[x_0, x_1, ..., x_N]`` cleanest first (x_k is the input of sampling step N - k), each drawn
    from q(x_k | x_0) with its own noise; x_0 is the clean latent itself."""
    x0 = working(x0)
    out = [x0]
    for alpha, s in reversed(grid.levels[:-1]):  # the cleanest noisy level first
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.dtype)
        out.append(alpha * x0 + s * noise)
    return out


def invert(denoise: Denoiser, x0: torch.Tensor, grid: Grid, generator: torch.Generator, eta: float = 1.0,
           callback: Callable[[dict], None] | None = None,
           first: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Edit-friendly inversion of `x0` on `grid`: the latents ``[x_0, ..., x_N]`` (cleanest first, as
    `vidinv.solver.invert` returns them) and the noise maps ``r_i`` of sampling steps i = 0..N-1
    (noisiest first). One `denoise` call per step from sampling step `first` on; the steps before it
    (a sampler that starts at `first` never runs them) get zero maps and no call, their latents are
    drawn all the same. `callback` receives ``{"i", "x", "map", **info}`` for each solved step (i
    counted from the clean end, as the exact inversion's)."""
    post, latents = posterior(grid, eta), noisy_latents(x0, grid, generator)
    steps, maps = grid.steps, [torch.zeros_like(latents[0])] * grid.steps
    for k, i in enumerate(reversed(range(first, steps))):  # the clean end first, as the exact inversion runs
        x, target, p = latents[steps - i], latents[steps - i - 1], post[i]
        maps[i] = target - (p.a * x + p.b * working(denoise(x, i)))
        require_finite(maps[i], "inversion", k, steps, grid.points[i].inverse_place)
        if callback is not None:
            callback({"i": k, **grid.points[i].info, "x": latents[steps - i], "map": maps[i]})
    return latents, maps


def sample(denoise: Denoiser, x: torch.Tensor, grid: Grid, maps, eta: float = 1.0,
           callback: Callable[[dict], None] | None = None, start: int = 0,
           blend: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Stochastic sampling on `grid` with the inversion's noise maps (``maps[i]`` for step i) from `x`
    at step `start`; `blend` as in `vidinv.solver.sample`. `callback` receives ``{"i", "x",
    "denoised", **step.info}`` after each step."""
    if len(maps) != grid.steps:
        raise errors.InputError(f"{len(maps)} noise maps for a {grid.steps}-step grid",
                                "Sample the edit-friendly trajectory on its own grid.")
    return solver.sample(denoise, x, stochastic_grid(grid, eta), callback, start, blend, offsets=maps)
