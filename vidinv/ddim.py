"""Deterministic DDIM sampling and its exact inverse, as pure functions over a denoiser.

A *denoiser* is any callable ``denoise(x, t) -> model_output`` (guidance already applied);
nothing here knows about models, devices or ComfyUI. Latents stay float32 between steps.

One DDIM step from timestep t to the previous point p (DDIM, Song et al. 2021, eq. 12 with
eta = 0), written for both parameterisations as an affine map of the model output::

    x_p = a * x_t + b * out(x_t, t)

==============  ======================================  =====================================
prediction      a                                       b
==============  ======================================  =====================================
v (CogVideoX)   sqrt(ab_t ab_p) + sqrt((1-ab_t)(1-ab_p))  -(sqrt(ab_p (1-ab_t)) - sqrt(ab_t (1-ab_p)))
epsilon (SD)    sqrt(ab_p / ab_t)                        sqrt(1-ab_p) - a sqrt(1-ab_t)
==============  ======================================  =====================================

where ab is alpha-bar (the cumulative signal fraction). `sampler_grid` hands these steps to the
family-neutral loop of `vidinv.solver`, whose inverse step solves ``x_t = (x_p - b * out(x_t, t)) / a``
for x_t: the model is always called at the noisier t, so sampler(inverse(x_p)) == x_p up to the
fixed-point residual.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from . import solver

Denoiser = Callable[[torch.Tensor, int], torch.Tensor]  # denoise(x, t): keyed by the DDIM timestep

# ----------------------------------------------------------------------------- schedule

@dataclasses.dataclass(frozen=True)
class Schedule:
    """alpha-bar over the training timesteps and what the scheduler does past the clean end."""
    alphas_cumprod: tuple[float, ...]
    final_alpha_cumprod: float
    prediction_type: str
    num_train_timesteps: int
    timestep_spacing: str
    steps_offset: int = 0

    def alpha_bar(self, t: int) -> float:
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod


def schedule_from_config(config: dict) -> Schedule:
    """alpha-bar with CogVideoX's semantics: ``snr_shift_scale`` and the zero-terminal-SNR
    rescale applied, as `CogVideoXDDIMScheduler` computes them (the generic
    `DDIMInverseScheduler(**config)` silently drops the shift). A config without
    ``snr_shift_scale`` (Stable Diffusion's DDIM) is taken as unshifted."""
    import inspect

    from diffusers import CogVideoXDDIMScheduler

    prediction = config.get("prediction_type", "epsilon")
    if prediction not in ("v_prediction", "epsilon"):
        raise ValueError(f"prediction_type {prediction!r} is not supported; the exact inverse needs "
                         "'v_prediction' or 'epsilon'")
    known = inspect.signature(CogVideoXDDIMScheduler.__init__).parameters
    kwargs = {k: v for k, v in config.items() if k in known and k != "self"}
    kwargs.setdefault("snr_shift_scale", 1.0)
    sched = CogVideoXDDIMScheduler(**kwargs)
    return Schedule(
        alphas_cumprod=tuple(float(a) for a in sched.alphas_cumprod.double()),
        final_alpha_cumprod=float(sched.final_alpha_cumprod),
        prediction_type=prediction,
        num_train_timesteps=int(sched.config.num_train_timesteps),
        timestep_spacing=str(sched.config.timestep_spacing),
        steps_offset=int(sched.config.steps_offset),
    )


def timesteps(schedule: Schedule, steps: int) -> list[int]:
    """The sampler's timesteps, noisiest first, as `CogVideoXDDIMScheduler.set_timesteps`."""
    n = schedule.num_train_timesteps
    if not 1 <= steps <= n:
        raise ValueError(f"steps must be between 1 and {n} (the model's training timesteps), got {steps}")
    if schedule.timestep_spacing == "trailing":
        ts = torch.arange(n, 0, -n / steps, dtype=torch.float64).round().long() - 1
    elif schedule.timestep_spacing == "leading":
        ts = torch.arange(steps, dtype=torch.float64).mul(n // steps).round().long().flip(0) + schedule.steps_offset
    elif schedule.timestep_spacing == "linspace":
        ts = torch.linspace(0, n - 1, steps, dtype=torch.float64).round().long().flip(0)
    else:
        raise ValueError(f"timestep_spacing {schedule.timestep_spacing!r} is not supported")
    return [int(t) for t in ts]


def previous_timestep(schedule: Schedule, t: int, steps: int) -> int:
    """The point a step from t lands on: ``t - num_train_timesteps // steps``, exactly as the
    scheduler computes it (so not always the next grid point when steps does not divide 1000)."""
    return t - schedule.num_train_timesteps // steps


def grid(schedule: Schedule, steps: int) -> list[tuple[int, int]]:
    """(t, p) for every sampler step, noisiest first."""
    return [(t, previous_timestep(schedule, t, steps)) for t in timesteps(schedule, steps)]


def coefficients(schedule: Schedule, t: int, p: int) -> tuple[float, float]:
    """(a, b) with ``x_p = a x_t + b out(x_t, t)``; see the module table."""
    ab_t, ab_p = schedule.alpha_bar(t), schedule.alpha_bar(p)
    if schedule.prediction_type == "v_prediction":
        c_x = math.sqrt(ab_t * ab_p) + math.sqrt((1 - ab_t) * (1 - ab_p))
        c_v = math.sqrt(ab_p * (1 - ab_t)) - math.sqrt(ab_t * (1 - ab_p))
        return c_x, -c_v
    if ab_t <= 0.0:
        raise ValueError(f"epsilon prediction is undefined at zero signal (timestep {t}); "
                         "a zero-terminal-SNR schedule needs v_prediction")
    a = math.sqrt(ab_p / ab_t)
    return a, math.sqrt(1 - ab_p) - a * math.sqrt(1 - ab_t)


def predict_x0(schedule: Schedule, x: torch.Tensor, out: torch.Tensor, t: int) -> torch.Tensor:
    """The clean latent the model output implies at t (for previews and metrics)."""
    ab = schedule.alpha_bar(t)
    if schedule.prediction_type == "v_prediction":
        return math.sqrt(ab) * x - math.sqrt(1 - ab) * out
    return (x - math.sqrt(1 - ab) * out) / math.sqrt(max(ab, 1e-12))


# ----------------------------------------------------------------------------- the grid for the loops

def sampler_grid(schedule: Schedule, steps: int) -> solver.Grid:
    """The `steps`-step DDIM grid as affine steps for `vidinv.solver` (model output = v or epsilon,
    no skip term; the model is called with the integer timestep t)."""
    points, pairs = [], grid(schedule, steps)
    for t, p in pairs:
        a, b = coefficients(schedule, t, p)
        ab = schedule.alpha_bar(t)
        if schedule.prediction_type == "v_prediction":
            x0 = (math.sqrt(ab), -math.sqrt(1 - ab))
        else:
            root = math.sqrt(max(ab, 1e-12))
            x0 = (1 / root, -math.sqrt(1 - ab) / root)
        points.append(solver.Step(a, b, 0.0, x0, {"t": t}, f"timestep {t}", f"timestep {p} -> {t}"))
    levels = tuple((math.sqrt(schedule.alpha_bar(t)), math.sqrt(1 - schedule.alpha_bar(t)))
                   for t in [t for t, _ in pairs] + [pairs[-1][1]])  # each step's input, then the clean end
    return solver.Grid("ddim", tuple(points), tuple(timesteps(schedule, steps)), schedule.prediction_type,
                       levels=levels)


def sample(denoise: Denoiser, x: torch.Tensor, schedule: Schedule, steps: int,
           callback: Callable[[dict], None] | None = None, start: int = 0) -> torch.Tensor:
    """Deterministic DDIM sampling (eta = 0) from noise `x` at the first grid point, with a denoiser
    keyed by timestep (`vidinv.solver.sample` on `sampler_grid`). `start` skips the first grid steps
    (SDEdit). `callback` receives ``{"i", "t", "x", "denoised"}`` after each step."""
    g = sampler_grid(schedule, steps)
    return solver.sample(solver.at(denoise, g.timesteps), x, g, callback, start)


def invert(denoise: Denoiser, x0: torch.Tensor, schedule: Schedule, steps: int, iters: int = 10,
           tol: float = 0.0, damping: float = 1.0, memory: int = 5, max_iters: int = 200,
           callback: Callable[[dict], None] | None = None) -> tuple[list[torch.Tensor], list[solver.InverseStats]]:
    """Exact DDIM inversion x_0 -> x_T with a denoiser keyed by timestep (`vidinv.solver.invert` on
    `sampler_grid`): the latents ``[x_0, ..., x_T]`` (x_k at the k-th grid timestep from the clean end)
    and the per-step stats; `callback` receives ``{"i", "t", "x", "stats"}``."""
    g = sampler_grid(schedule, steps)
    return solver.invert(solver.at(denoise, g.timesteps), x0, g, solver.Solver(iters, tol, memory, damping, max_iters),
                         callback)
