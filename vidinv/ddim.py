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

where ab is alpha-bar (the cumulative signal fraction). The inverse step solves
``x_t = (x_p - b * out(x_t, t)) / a`` for x_t: the model is always called at the noisier t,
so sampler(inverse(x_p)) == x_p up to the fixed-point residual.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from . import errors

Denoiser = Callable[[torch.Tensor, int], torch.Tensor]


def working(x: torch.Tensor) -> torch.Tensor:
    """Latents between steps are at least float32 (bf16 casts cost ~1 %); float64 stays."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


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


# ----------------------------------------------------------------------------- one step

def step(x: torch.Tensor, out: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """One DDIM step: ``x_p = a x_t + b out``, in float32 or wider."""
    return a * working(x) + b * working(out)


@dataclasses.dataclass
class InverseStats:
    """How one inverse step converged. `residual` is the largest per-video ``|G(x) - x| / |G(x)|``
    of the returned iterates' predecessors (x_p itself when no refinement was made); `history` the
    same for every refined iterate."""
    residual: float
    calls: int
    history: list[float]


def _rel_rows(diff: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Relative norm per video (first axis), float64."""
    d = diff.flatten(1).double().norm(dim=1)
    return d / ref.flatten(1).double().norm(dim=1).clamp_min(1e-12)


def invert_step(x_p: torch.Tensor, denoise: Denoiser, t: int, a: float, b: float, iters: int = 10,
                tol: float = 0.0, damping: float = 1.0, memory: int = 5) -> tuple[torch.Tensor, InverseStats]:
    """Solve ``x_t = G(x_t) = (x_p - b denoise(x_t, t)) / a`` for the exact DDIM inverse.

    1. Start from the naive DDIM inverse ``G(x_p)`` (the model evaluated at x_p): 1 call.
    2. Refine with up to `iters` more evaluations of G, accelerated by Anderson mixing over
       the last `memory` iterates (``memory=0`` is plain fixed-point iteration); `damping`
       scales the step towards G (1 = undamped). Each video of a batch is mixed on its own
       (the model calls stay batched), and safeguarded: when its residual grows, its Anderson
       memory is dropped and its next step is a plain one.
    3. Stop early once every video's relative residual ``|G(x) - x| / |G(x)|`` is at most `tol`.
    4. Return, per video, ``G(x)`` of the evaluated iterate with the smallest residual: the
       sampler step from it lands on x_p with error ``a * residual`` at most.

    ``iters=0`` is the naive inverse (its residual is that of x_p). A non-finite model output ends
    the refinement with a non-finite residual, for the caller to report. The model is always called
    at the noisier timestep t.
    Near the clean end a trained model makes G stiff (the last sampling step is the model's own
    x0 prediction, flat along noise directions): plain iteration crawls there.
    """
    x_p = working(x_p)
    batch = x_p.shape[0]

    def g(x: torch.Tensor) -> torch.Tensor:
        return (x_p - b * denoise(x, t).to(x_p.dtype)) / a

    x = g(x_p)
    naive = _rel_rows(x - x_p, x)  # the residual of x_p, whose G(x_p) is the first iterate
    calls, history = 1, []
    xs, fs = [], []  # Anderson memory: iterates and residuals G(x) - x
    since = [0] * batch  # per video: the first memory entry still valid
    best_x, best_r = x.clone(), torch.full((batch,), math.inf, dtype=torch.float64)
    for _ in range(iters):
        gx = g(x)
        calls += 1
        f = gx - x
        r = _rel_rows(f, gx)
        history.append(float(r.max()))
        better = r < best_r
        best_x[better] = gx[better]
        worse = (r > best_r) & torch.isfinite(best_r)
        best_r = torch.minimum(best_r, r)
        if float(r.max()) <= tol or not bool(torch.isfinite(r).all()):
            break
        xs.append(x)
        fs.append(f)
        if len(xs) > memory + 1:
            xs.pop(0)
            fs.pop(0)
            since = [max(0, k - 1) for k in since]
        for k in torch.nonzero(worse).flatten().tolist():
            since[k] = len(xs) - 1  # overshot: forget this video's mixing
        x = torch.stack([_anderson([h[k] for h in xs[since[k]:]], [h[k] for h in fs[since[k]:]], damping)
                         if memory > 0 and len(xs) - since[k] > 1 else x[k] + damping * f[k]
                         for k in range(batch)])
    residual = float((best_r if history else naive).max())
    if not bool(torch.isfinite(best_x).all()):
        residual = math.nan
    return best_x, InverseStats(residual, calls, history)


def step_budget(steps: int, k: int, iters: int, used: int, tol: float, max_iters: int) -> int:
    """Refinements allowed at inversion step k (cleanest first).

    With a tolerance the budget is pooled: the whole inversion may make ``steps * (1 + iters)``
    model calls (so at most ``1 + iters`` per step on average); a step may spend what earlier
    steps saved, keeping half the average, ``(1 + iters) // 2`` calls (at least 1), for each step
    still to come. The stiff clean end (inverted first) thus gets many iterations without
    starving the steps after it (a reserve of 4 let a 6-step inversion spend 106 of its 126 calls
    on the first step and leave the next at a residual of 8e-3), and easy steps stop at the
    tolerance. Without a tolerance every step makes exactly `iters` refinements. `max_iters` caps
    one step on top of the pool. Lifting the cap (200) is no better split: it lets the bundled I2V
    model's clean end reach 1e-5 at guidance 6 (248 calls, 2 videos), but on the bundled T2V model
    at guidance 6 (8 videos) the clean end spends all 305 calls it may take, still ends at 9e-4, and
    the steps after it, held to their reserve, end above the tolerance too: round trip 2.4e-3
    instead of 7.0e-4 (tools/study_clean_end.py, tools/bench_inversion.py --methods default)."""
    if tol <= 0:
        return iters
    reserve = (steps - k - 1) * max(1, (1 + iters) // 2)
    left = steps * (1 + iters) - used - reserve - 1  # minus this step's first call
    return max(0, min(max_iters, left))


def _anderson(xs: list[torch.Tensor], fs: list[torch.Tensor], damping: float) -> torch.Tensor:
    """Type-II Anderson mixing: minimise |f_k - dF gamma| over the residual differences, then
    ``x = x_k + beta f_k - (dX + beta dF) gamma``. Solved in float64 by least squares."""
    f_k, x_k = fs[-1].flatten().double(), xs[-1].flatten().double()
    d_f = torch.stack([(fs[i + 1] - fs[i]).flatten().double() for i in range(len(fs) - 1)], dim=1)
    d_x = torch.stack([(xs[i + 1] - xs[i]).flatten().double() for i in range(len(xs) - 1)], dim=1)
    gamma = torch.linalg.lstsq(d_f, f_k.unsqueeze(1)).solution.squeeze(1)
    new = x_k + damping * f_k - (d_x + damping * d_f) @ gamma
    return new.view_as(xs[-1]).to(xs[-1].dtype)


# ----------------------------------------------------------------------------- loops

NONFINITE_FIX = ("The model's output was NaN or infinite there: check that the input latent is finite, use fp32 "
                 "precision, a lower guidance, or more steps.")


def require_finite(x: torch.Tensor, what: str, i: int, steps: int, where: str, residual: float = 0.0) -> None:
    """Stop with the step where a latent (or an inverse step's residual) stopped being finite:
    NaN is never returned as a result."""
    bad = "latent" if not bool(torch.isfinite(x).all()) else "residual" if not math.isfinite(residual) else None
    if bad:
        raise errors.InputError(f"{what} step {i + 1} of {steps} ({where}) gave a non-finite {bad}", NONFINITE_FIX)


def check_invertible(schedule: Schedule, steps: int) -> None:
    """An inverse step solves ``x_t = (x_p - b out(x_t)) / a``: with a = 0 the sampler step is the
    model's clean prediction alone (a single step from a zero-terminal-SNR start), which no noise
    maps back from. Refused before any model call."""
    for i, (t, p) in enumerate(reversed(grid(schedule, steps))):
        if not coefficients(schedule, t, p)[0] > 0.0:
            raise errors.InputError(
                f"inversion step {i + 1} of {steps} (timestep {p} -> {t}) cannot be inverted: the sampler step "
                "there ignores its input latent (one step from zero signal is the model's clean prediction alone)",
                "Invert with 2 or more steps.")


def sample(denoise: Denoiser, x: torch.Tensor, schedule: Schedule, steps: int,
           callback: Callable[[dict], None] | None = None, start: int = 0) -> torch.Tensor:
    """Deterministic DDIM sampling (eta = 0) from noise `x` at the first grid point.

    `start` skips the first grid steps (x is then taken to sit at that step's timestep, as
    SDEdit does). `callback` receives ``{"i", "t", "x", "denoised"}`` after each step."""
    x = working(x)
    for i, (t, p) in enumerate(grid(schedule, steps)):
        if i < start:
            continue
        a, b = coefficients(schedule, t, p)
        x_t = x
        out = working(denoise(x_t, t))
        x = step(x_t, out, a, b)
        require_finite(x, "sampling", i, steps, f"timestep {t}")
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": predict_x0(schedule, x_t, out, t)})
    return x


def invert(denoise: Denoiser, x0: torch.Tensor, schedule: Schedule, steps: int, iters: int = 10,
           tol: float = 0.0, damping: float = 1.0, memory: int = 5, max_iters: int = 200,
           callback: Callable[[dict], None] | None = None) -> tuple[list[torch.Tensor], list[InverseStats]]:
    """Exact DDIM inversion: x_0 -> x_T through every grid point, cleanest first.

    `iters` refinements per step on average (see `step_budget`: with a tolerance, stiff steps
    borrow what easy steps leave, up to `max_iters`).

    Returns the latents ``[x_0, x_1, ..., x_T]`` (float32, or float64 if given; x_k sits at the
    k-th grid timestep counted from the clean end) and the per-step convergence stats. `callback` receives
    ``{"i", "t", "x", "stats"}`` after each step. A step that cannot be inverted is refused before any
    model call, and a non-finite latent or residual stops the inversion at its step (InputError)."""
    latents, stats = [working(x0)], []
    check_invertible(schedule, steps)
    used = 0
    for i, (t, p) in enumerate(reversed(grid(schedule, steps))):
        a, b = coefficients(schedule, t, p)
        budget = step_budget(steps, i, iters, used, tol, max_iters)
        x, st = invert_step(latents[-1], denoise, t, a, b, budget, tol, damping, memory)
        require_finite(x, "inversion", i, steps, f"timestep {p} -> {t}", st.residual)
        used += st.calls
        latents.append(x)
        stats.append(st)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "stats": st})
    return latents, stats
