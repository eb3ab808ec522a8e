"""Deterministic Euler sampling on an EDM sigma grid and its exact inverse, as pure functions
over a denoiser (Stable Video Diffusion's sampler).

A *denoiser* here is any callable ``denoise(x, i) -> D`` returning the denoised estimate D(x; sigma_i)
(guidance already applied) for the latent x at grid point i, k-diffusion style: x = clean + sigma * noise,
unscaled. Nothing here knows about models, devices or ComfyUI; latents stay at least float32.

Karras et al. 2022 ("Elucidating the Design Space", EDM), with sigma_data = 1 as SVD uses it:

==========  ============================  ===============================  ==========================
symbol      v-prediction (SVD)            epsilon                          meaning
==========  ============================  ===============================  ==========================
c_in        1 / sqrt(sigma^2 + 1)         1 / sqrt(sigma^2 + 1)            model input = c_in * x
c_skip      1 / (sigma^2 + 1)             1                                D = c_skip x + c_out F
c_out       -sigma / sqrt(sigma^2 + 1)    -sigma                           F = the network's output
c_noise     log(sigma) / 4                (discrete timestep)              the model's time input
==========  ============================  ===============================  ==========================

These are exactly what diffusers' `EulerDiscreteScheduler` does for SVD's config: `scale_model_input`
divides by sqrt(sigma^2 + 1), `step` forms ``pred_original_sample = F c_out + x c_skip``, and with
``timestep_type="continuous"`` its ``timesteps`` are ``0.25 * log(sigma)``.

One Euler step from sigma_i to sigma_{i+1} (Karras et al. Algorithm 1 without the Heun correction,
s_churn = 0) is an affine map of the denoised estimate::

    x_{i+1} = a x_i + b D(x_i; sigma_i),    a = sigma_{i+1} / sigma_i,   b = 1 - a

(the scheduler's ``x + (x - D) / sigma * (sigma_next - sigma)``). The last step lands on sigma = 0,
where a = 0 and ``x_0 = D(x_1; sigma_1)``.

**The inverse.** Writing ``D(x) = c_skip x + R(x)`` (R = c_out F, the network's part), the step is
``x_{i+1} = (a + b c_skip) x_i + b R(x_i)``: the same affine form as a DDIM step, so
`vidinv.solver.invert_step` solves it with ``a' = a + b c_skip`` and ``out = R``. Moving the skip term to
the left is what makes the fixed point well conditioned: the Jacobian of
``G(x) = (x_{i+1} - b R(x)) / a'`` is ``b c_out c_in dF / a'``, only the network's own sensitivity,
whereas the naive ``G(x) = (x_{i+1} - b D(x)) / a`` has Jacobian about ``-(sigma_i / sigma_{i+1} - 1)``
near the clean end (where D is nearly the identity), about -2.9 at the second-last step of SVD's 25-step
grid, and is undefined at a = 0. (Tiny random UNet, that step: the naive form diverges, the split form
reaches 1e-17 in six plain iterations.)
The last step needs no special case: a' = c_skip(sigma_1) > 0, ``G(x) = (x_0 - R(x)) / c_skip``, and the
solver's first iterate ``G(x_0) = x_0 + (x_0 - D(x_0; sigma_1)) / c_skip`` is x_0 plus sigma_1 times the
model's noise estimate at x_0 (the naive inverse Euler step; later steps start from an iterate predicted
without a call, `vidinv.solver.predicted_start`). The model is always called at the noisier
sigma_i, so ``sample(invert(x_0)) == x_0`` up to the fixed-point residual.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Callable

import torch

from . import solver

Denoiser = Callable[[torch.Tensor, int], torch.Tensor]
PREDICTIONS = ("v_prediction", "epsilon")


# ----------------------------------------------------------------------------- preconditioning

def c_in(sigma: float) -> float:
    """Scale of the model input (`EulerDiscreteScheduler.scale_model_input`)."""
    return 1.0 / math.sqrt(sigma * sigma + 1.0)


def c_skip(sigma: float, prediction_type: str = "v_prediction") -> float:
    return 1.0 / (sigma * sigma + 1.0) if prediction_type == "v_prediction" else 1.0


def c_out(sigma: float, prediction_type: str = "v_prediction") -> float:
    return -sigma / math.sqrt(sigma * sigma + 1.0) if prediction_type == "v_prediction" else -sigma


def model_time(sigma: float) -> float:
    """SVD's continuous time input ``log(sigma) / 4``, as ``EulerDiscreteScheduler.timesteps`` holds it
    for ``timestep_type="continuous"`` with v-prediction (computed in float32 there)."""
    return 0.25 * math.log(sigma)


def denoised(x: torch.Tensor, out: torch.Tensor, sigma: float, prediction_type: str = "v_prediction") -> torch.Tensor:
    """D = c_skip x + c_out F: the clean latent that the network output F implies at sigma."""
    return c_skip(sigma, prediction_type) * solver.working(x) + c_out(sigma, prediction_type) * solver.working(out)


# ----------------------------------------------------------------------------- the grid

@dataclasses.dataclass(frozen=True)
class Grid:
    """What one sampling run needs from the scheduler: N+1 sigmas (noisiest first, the last one the
    clean end, 0 for SVD), the N time values the model is called with, and the scale of the
    starting noise (``x_N = noise * init_noise_sigma``)."""
    sigmas: tuple[float, ...]
    timesteps: tuple[float, ...]
    prediction_type: str
    init_noise_sigma: float

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1


def grid_from_config(config: dict, steps: int) -> Grid:
    """The sigma grid of ``EulerDiscreteScheduler.set_timesteps(steps)`` for a scheduler config
    (SVD's: Karras sigmas between sigma_min 0.002 and sigma_max 700, rho 7, final sigma 0).
    Sigmas are the scheduler's float32 values, widened to Python floats. ``init_noise_sigma`` is the
    scheduler's: sqrt(sigma_max^2 + 1) for SVD's "leading" spacing (the pipeline and Stability's own
    sampler start there), sigma_max for "linspace" / "trailing"."""
    from diffusers import EulerDiscreteScheduler

    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction_type {prediction!r} is not supported; the exact inverse needs one of "
                         f"{PREDICTIONS}")
    n = int(config.get("num_train_timesteps", 1000))
    if not 1 <= steps <= n:
        raise ValueError(f"steps must be between 1 and {n} (the model's training timesteps), got {steps}")
    known = inspect.signature(EulerDiscreteScheduler.__init__).parameters
    sched = EulerDiscreteScheduler(**{k: v for k, v in config.items() if k in known and k != "self"})
    sched.set_timesteps(steps)
    sigmas = tuple(float(s) for s in sched.sigmas)
    if any(not s > t for s, t in zip(sigmas, sigmas[1:])) or sigmas[-1] < 0:
        raise ValueError(f"the scheduler's sigmas are not strictly decreasing to >= 0: {sigmas}")
    return Grid(sigmas, tuple(float(t) for t in sched.timesteps), prediction, float(sched.init_noise_sigma))


def coefficients(sigma: float, sigma_next: float) -> tuple[float, float]:
    """(a, b) of the Euler step ``x_next = a x + b D(x; sigma)``."""
    a = sigma_next / sigma
    return a, 1.0 - a


# ----------------------------------------------------------------------------- the grid for the loops

def steps_grid(sigmas, prediction_type: str = "v_prediction", timesteps=None,
               init_noise_sigma: float = 1.0) -> solver.Grid:
    """The Euler steps on `sigmas` as affine steps for `vidinv.solver`: model output = D, skip term
    c_skip (the split form of the module docstring), clean estimate D itself."""
    if prediction_type not in PREDICTIONS:
        raise ValueError(f"prediction_type {prediction_type!r} is not one of {PREDICTIONS}")
    points = []
    for i in range(len(sigmas) - 1):
        sigma, nxt = sigmas[i], sigmas[i + 1]
        a, b = coefficients(sigma, nxt)
        points.append(solver.Step(a, b, c_skip(sigma, prediction_type), (0.0, 1.0), {"sigma": sigma},
                                  f"sigma {sigma:.4g}", f"sigma {nxt:.4g} -> {sigma:.4g}"))
    times = tuple(timesteps) if timesteps is not None else tuple(range(len(points)))
    return solver.Grid("euler", tuple(points), times, prediction_type, float(init_noise_sigma),
                       tuple(float(s) for s in sigmas), tuple((1.0, float(s)) for s in sigmas))


def sampler_grid(grid: Grid) -> solver.Grid:
    return steps_grid(grid.sigmas, grid.prediction_type, grid.timesteps, grid.init_noise_sigma)


def sample(denoise: Denoiser, x: torch.Tensor, sigmas, callback: Callable[[dict], None] | None = None,
           start: int = 0) -> torch.Tensor:
    """Deterministic Euler sampling (Karras et al. 2022, Algorithm 1 without the Heun correction;
    diffusers' `EulerDiscreteScheduler.step` with s_churn = 0) from `x` at ``sigmas[start]``
    (`vidinv.solver.sample`).

    `x` is unscaled: pure noise enters as ``noise * grid.init_noise_sigma``. `callback` receives
    ``{"i", "sigma", "x", "denoised"}`` after each step."""
    return solver.sample(denoise, x, steps_grid(sigmas), callback, start)


def invert(denoise: Denoiser, x0: torch.Tensor, sigmas, iters: int = 10, tol: float = 0.0, damping: float = 1.0,
           memory: int = 5, max_iters: int = 200, prediction_type: str = "v_prediction",
           callback: Callable[[dict], None] | None = None) -> tuple[list[torch.Tensor], list[solver.InverseStats]]:
    """Exact inversion of `sample`: x_0 at ``sigmas[-1]`` -> x_N at ``sigmas[0]``, cleanest first
    (`vidinv.solver.invert` in the skip-split form of the module docstring).

    Returns the latents ``[x_0, x_1, ..., x_N]`` (x_k sits at ``sigmas[N - k]``; float32, or float64 if
    given) and the per-step convergence stats. `callback` receives ``{"i", "sigma", "x", "stats"}``."""
    return solver.invert(denoise, x0, steps_grid(sigmas, prediction_type),
                         solver.Solver(iters, tol, memory, damping, max_iters), callback)
