"""FlowEdit (Kulikov, Kleiner, Huberman-Spiegelglas & Michaeli, "FlowEdit: Inversion-Free Text-Based
Editing Using Pre-Trained Flow Models", ICCV 2025), Algorithm 1 with its n_min tail, as a pure
function over two velocity callables and the pack's flow grid (`vidinv.flow`).

FlowEdit needs no inversion and no trajectory. It integrates an ODE that starts at the source
latent and is driven by the *difference* of the target and source velocities, each evaluated on a
freshly noised copy of the source that is shifted by how far the edit has come::

    Z_edit = X_src                                             (at t_{n_max})
    for i = n_max, ..., n_min + 1:
        for k = 1..n_avg:  N_k ~ N(0, I)
            Z_src = (1 - t_i) X_src + t_i N_k
            Z_tar = Z_edit + Z_src - X_src
            V_k   = v(Z_tar, t_i, c_tar; g_tar) - v(Z_src, t_i, c_src; g_src)
        Z_edit += (t_{i-1} - t_i) mean_k V_k
    if n_min = 0: return Z_edit
    else: N ~ N(0, I);  X = Z_edit + (1 - t_{n_min}) X_src + t_{n_min} N - X_src,
          then n_min plain Euler steps of v(., c_tar; g_tar) from t_{n_min} to 0 (the paper's
          SDEdit-like tail) and return X

| here               | paper (Algorithm 1)                                             |
|--------------------|-----------------------------------------------------------------|
| ``x_src``          | X_0^src, the source latent (clean, VAE-scaled)                  |
| ``grid.sigmas[j]`` | t_{T-j}: the pack's step j (0 = noisiest) runs sigma_j -> sigma_{j+1}, the paper's step i = T - j runs t_i -> t_{i-1} |
| ``n_max``          | n_max: FlowEdit starts at the paper's step n_max = the pack's step T - n_max (n_max = T: at sigma 1, pure noise) |
| ``n_min``          | n_min: the last n_min steps (the pack's steps T - n_min .. T - 1) are the plain tail |
| ``v_src(x, j)``    | V(Z^src, t_i, c_src) with source guidance (CFG applied by the callable) |
| ``v_tar(x, j)``    | V(Z^tar, t_i, c_tar) with target guidance                      |

This is the published code's indexing too (fallenshock/FlowEdit: a step is skipped while
``T - j > n_max`` and is a FlowEdit step while ``T - j > n_min``). ``Z_tar`` is formed as
``Z_src + (Z_edit - X_src)``, the same sum written so that an unchanged edit adds exactly 0: with the
source prompt and guidance on both sides (and a deterministic velocity) ``V = 0`` at every step and
``Z_edit`` stays ``X_src`` bit for bit, so with ``n_min = 0`` FlowEdit reconstructs exactly. With
``n_min > 0`` the tail re-draws the last steps from fresh noise and reconstructs only approximately.

Cost: ``2 n_avg`` velocity calls per FlowEdit step (each a CFG pair when its guidance is above 1: the
paper's "4 model evaluations per step"), one per tail step.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import editmask, errors, flow
from .solver import Denoiser, Grid, require_finite, working


def window(steps: int, n_min: int, n_max: int, n_avg: int = 1) -> tuple[int, int]:
    """The pack's step indices (first FlowEdit step, first tail step) of the paper's window
    ``n_min < i <= n_max`` on a `steps`-step grid; InputError for a window the grid does not hold,
    or for `n_avg` (noises averaged per step) below 1."""
    if not (errors.is_count(n_avg) and n_avg >= 1):
        raise errors.InputError(f"FlowEdit's n_avg {errors.shorten(repr(n_avg))} is not a whole number >= 1",
                                "Set n_avg to 1 (the paper's default) or more.")
    for name, value in (("n_min", n_min), ("n_max", n_max)):
        if not errors.is_count(value):
            raise errors.InputError(f"FlowEdit's {name} {errors.shorten(repr(value))} is not a whole number >= 0",
                                    f"Set {name} to a step count between 0 and steps.")
    if not n_max <= steps:
        raise errors.InputError(f"FlowEdit's n_max {n_max} is more than the {steps} steps of the grid",
                                f"Set n_max to at most {steps} (n_max = steps starts from pure noise), or raise "
                                "steps.")
    if not n_min < n_max:
        raise errors.InputError(f"FlowEdit's n_min {n_min} must be below n_max {n_max}: the edit runs on the paper's "
                                "steps n_max down to n_min + 1",
                                "Lower n_min (0 = no plain tail) or raise n_max; with n_min = n_max FlowEdit does "
                                "nothing and the tail alone is SDEdit.")
    return steps - n_max, steps - n_min


def check_grid(grid: Grid) -> None:
    """FlowEdit moves along straight flow paths ``(1 - t) x + t noise``: a flow grid only."""
    if grid.kind != flow.KIND or grid.sigmas is None:
        raise errors.InputError(f"FlowEdit needs a flow-matching model's grid; this model samples a {grid.kind!r} "
                                "grid", "Use a flow model (Wan), or edit with inversion + Guided Sample.")


def sample(v_src: Denoiser, v_tar: Denoiser, x_src: torch.Tensor, grid: Grid, n_max: int, n_min: int = 0,
           n_avg: int = 1, generator: torch.Generator | None = None,
           callback: Callable[[dict], None] | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """FlowEdit of the clean source latent `x_src` on the flow `grid` (module docstring): returns
    the edited clean latent. `v_src(x, j)` / `v_tar(x, j)`: the guided velocities under the source
    and target conditioning at the pack's step j; `generator` draws every fresh noise (CPU, in
    order: n_avg per FlowEdit step, then one for the tail). `callback` receives ``{"i", "x",
    "denoised", "sigma", "phase"}`` after each step (i counts the pack's steps).

    `mask` (a latent mask ``[B, F, 1, h, w]`` in 0..1, `vidinv.editmask`): after every step the
    edit is kept inside it and the source outside: ``Z_edit`` is blended with ``X_src`` (where
    FlowEdit's path sits when nothing is edited), a tail step's latent with the source noised to
    the next level by the tail's own noise."""
    x = None
    for info in steps(v_src, v_tar, x_src, grid, n_max, n_min, n_avg, generator, mask):
        if callback is not None:
            callback(info)
        x = info["x"]
    return x


@torch.no_grad()
def steps(v_src: Denoiser, v_tar: Denoiser, x_src: torch.Tensor, grid: Grid, n_max: int, n_min: int = 0,
          n_avg: int = 1, generator: torch.Generator | None = None, mask: torch.Tensor | None = None):
    """`sample` one step at a time: yields the callback's dict after each step, the last one's ``"x"`` the edit.
    A caller that must change what `v_src` / `v_tar` call between steps (another network from some step on) stops
    iterating after one step and goes on with the same generator object; the grid and window are checked at the
    first ``next``."""
    check_grid(grid)
    first, tail = window(grid.steps, n_min, n_max, n_avg)
    x_src = working(x_src)
    sigmas = grid.sigmas

    def noise() -> torch.Tensor:
        return torch.randn(x_src.shape, generator=generator, dtype=torch.float32).to(x_src.device, x_src.dtype)

    z_edit = x_src.clone()
    for j in range(first, tail):
        t, t_next = sigmas[j], sigmas[j + 1]
        delta = torch.zeros_like(x_src)
        for _ in range(n_avg):
            z_src = (1.0 - t) * x_src + t * noise()
            z_tar = z_src + (z_edit - x_src)
            delta += (working(v_tar(z_tar, j)) - working(v_src(z_src, j))) / n_avg
        z_edit = z_edit + (t_next - t) * delta
        if mask is not None:
            z_edit = editmask.blend(z_edit, mask, x_src)
        require_finite(z_edit, "FlowEdit", j, grid.steps, f"sigma {t:.4g}")
        yield {"i": j, "x": z_edit, "denoised": z_edit, "sigma": t, "phase": "flowedit"}
    if tail == grid.steps:  # n_min = 0
        return
    t = sigmas[tail]
    tail_noise = noise()
    x = z_edit + ((1.0 - t) * x_src + t * tail_noise - x_src)
    for j in range(tail, grid.steps):
        t, t_next = sigmas[j], sigmas[j + 1]
        v = working(v_tar(x, j))
        denoised = x - t * v
        x = x + (t_next - t) * v
        if mask is not None:
            x = editmask.blend(x, mask, (1.0 - t_next) * x_src + t_next * tail_noise)
        require_finite(x, "FlowEdit (tail)", j, grid.steps, f"sigma {t:.4g}")
        yield {"i": j, "x": x, "denoised": denoised, "sigma": t, "phase": "tail"}
