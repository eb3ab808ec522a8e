"""The sampler loop and its exact inverse, written once for every model family, as pure functions
over a denoiser and a grid of affine steps.

A *denoiser* is any callable ``denoise(x, i) -> out`` for sampling step i (noisiest first; guidance
already applied). A *grid* lists the steps; each is an affine map of the model output::

    x_{i+1} = a_i x_i + b_i out(x_i, i)

DDIM (`vidinv.ddim`: out = v or epsilon) and the EDM Euler sampler (`vidinv.edm`: out = the denoised
estimate D) are both of this form; their modules derive a and b. Nothing here knows about models,
devices or ComfyUI. Latents stay at least float32 between steps.

**The inverse step.** Given x_{i+1}, solve ``x_i = G(x_i) = (x_{i+1} - b R(x_i)) / a'`` by fixed-point
iteration, where ``out = skip x + R(x)`` splits the model output into the part proportional to its
input (EDM's c_skip; 0 for DDIM) and the rest, and ``a' = a + b skip``. Moving the skip term to the
left keeps G well conditioned where the output is nearly the identity (see `vidinv.edm`). The model is
always called at the noisier step, so ``sample(invert(x_0)) == x_0`` up to the fixed-point residual.

**The first iterate costs no call.** Every inverse step after the clean end starts from
`predicted_start`: the step solved with the model output extrapolated from the last two inverse
steps' converged outputs (FireFlow's velocity reuse with one). Starting from x_p instead spends a
call on G(x_p), the naive inverse, which only says what naive DDIM inversion already knew. The clean
end (inverted first) has nothing to predict from and starts from x_p.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch

from . import errors

Denoiser = Callable[[torch.Tensor, int], torch.Tensor]


def working(x: torch.Tensor) -> torch.Tensor:
    """Latents between steps are at least float32 (bf16 casts cost ~1 %); float64 stays."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


# ----------------------------------------------------------------------------- the grid

@dataclasses.dataclass(frozen=True)
class Step:
    """One sampler step ``x_next = a x + b out``. `skip`: the part of `out` proportional to x (see the
    module docstring); `x0`: (c_x, c_out) with the clean estimate ``c_x x + c_out out`` (previews);
    `info`: where the step is, for callbacks (``{"t": 981}`` or ``{"sigma": 700.0}``); `place` and
    `inverse_place` the same in words for messages."""
    a: float
    b: float
    skip: float
    x0: tuple[float, float]
    info: dict
    place: str
    inverse_place: str


@dataclasses.dataclass(frozen=True)
class Grid:
    """A sampling grid, noisiest step first. `kind` names the sampler ("ddim", "euler");
    `timesteps` are the values the model is called with (a trajectory stores them), `sigmas` the
    noise levels where the sampler has them; fresh unit noise enters as ``noise * init_noise_sigma``;
    `prediction_type` is what the model outputs ("v_prediction", "epsilon"); `levels` where each
    latent of the grid sits, ``x = alpha clean + s noise``: one (alpha, s) per step's input and the
    clean end last (the stochastic sampler of `vidinv.friendly` needs them)."""
    kind: str
    points: tuple[Step, ...]
    timesteps: tuple
    prediction_type: str
    init_noise_sigma: float = 1.0
    sigmas: tuple[float, ...] | None = None
    levels: tuple[tuple[float, float], ...] | None = None

    @property
    def steps(self) -> int:
        return len(self.points)


def step(x: torch.Tensor, out: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """One sampler step: ``x_next = a x + b out``, in float32 or wider."""
    return a * working(x) + b * working(out)


# ----------------------------------------------------------------------------- the solver

@dataclasses.dataclass(frozen=True)
class Solver:
    """How inverse steps are solved: `iters` refinements per step on average (pooled with a
    tolerance, see `step_budget`), stop at relative residual `tol`, Anderson `memory` (0 = plain
    fixed-point iteration), `damping` in (0, 1] (None = automatic: 1 without guidance, 0.5 with
    CFG, which amplifies the model's Jacobian and makes undamped steps overshoot), at most
    `max_iters` refinements on one step."""
    iters: int = 10
    tol: float = 1e-5
    memory: int = 5
    damping: float | None = None
    max_iters: int = 200

    def resolved(self, cfg: bool) -> "Solver":
        """The settings with automatic damping picked and every value checked."""
        damping = self.damping if self.damping is not None else auto_damping(cfg)
        if not 0.0 < damping <= 1.0:
            raise errors.InputError(f"damping {damping} is not in (0, 1]",
                                    "Use 1 for undamped steps, or 0 for automatic.")
        for name in ("iters", "memory", "max_iters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise errors.InputError(f"solver {name} {value!r} is not a whole number >= 0", "Use 0 or more.")
        if not (self.tol >= 0 and math.isfinite(self.tol)):
            raise errors.InputError(f"tolerance {self.tol} is not a finite number >= 0", "Use 0 or a small number.")
        return dataclasses.replace(self, damping=float(damping))

    def record(self) -> dict:
        """What a trajectory keeps of the settings besides iterations and tolerance."""
        return {"damping": float(self.damping), "memory": int(self.memory)}


def auto_damping(cfg: bool) -> float:
    return 0.5 if cfg else 1.0


@dataclasses.dataclass
class InverseStats:
    """How one inverse step converged. `residual` is the largest per-video ``|G(x) - x| / |G(x)|``
    of the returned iterates' predecessors (x_p itself when the step made one call from x_p);
    `history` the same for every refined iterate (the iterates after the start). `output`: the
    denoiser's output at each video's returned iterate's predecessor (what `invert` predicts the
    next step's first iterate from); `invert` drops it once used."""
    residual: float
    calls: int
    history: list[float]
    output: torch.Tensor | None = dataclasses.field(default=None, repr=False, compare=False)


def _rel_rows(diff: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Relative norm per video (first axis), float64."""
    d = diff.flatten(1).double().norm(dim=1)
    return d / ref.flatten(1).double().norm(dim=1).clamp_min(1e-12)


def invert_step(x_p: torch.Tensor, denoise: Denoiser, t, a: float, b: float, iters: int = 10,
                tol: float = 0.0, damping: float = 1.0, memory: int = 5,
                start: torch.Tensor | None = None) -> tuple[torch.Tensor, InverseStats]:
    """Solve ``x_t = G(x_t) = (x_p - b denoise(x_t, t)) / a`` for the exact inverse of one step.

    1. Evaluate G at the start: `start` when given (a first iterate that cost no model call, see
       `predicted_start`), else x_p itself, whose G(x_p) is the naive inverse. 1 call.
    2. Refine with up to `iters` more evaluations of G, accelerated by Anderson mixing over
       the last `memory` iterates (``memory=0`` is plain fixed-point iteration); `damping`
       scales the step towards G (1 = undamped). Each video of a batch is mixed on its own
       (the model calls stay batched), and safeguarded: when its residual grows, its Anderson
       memory is dropped and its next step is a plain one. From x_p the mixing starts at G(x_p)
       (x_p is no iterate of G's); from a given start, at the start.
    3. Stop early once every video's relative residual ``|G(x) - x| / |G(x)|`` is at most `tol`
       (a given start that is already there stops after its one call).
    4. Return, per video, ``G(x)`` of the evaluated iterate with the smallest residual: the
       sampler step from it lands on x_p with error ``a * residual`` at most.

    ``iters=0`` without a start is the naive inverse (its residual is that of x_p); with one, G of
    the start. A non-finite model output ends the refinement with a non-finite residual, for the
    caller to report. The model is always called at the noisier point t.
    Near the clean end a trained model makes G stiff (the last sampling step is the model's own
    x0 prediction, flat along noise directions): plain iteration crawls there.
    """
    x_p = working(x_p)
    batch = x_p.shape[0]
    outs = []

    def g(x: torch.Tensor) -> torch.Tensor:
        outs.append(working(denoise(x, t)).to(x_p.dtype))
        return (x_p - b * outs[-1]) / a

    history = []
    xs, fs = [], []  # Anderson memory: iterates and residuals G(x) - x
    since = [0] * batch  # per video: the first memory entry still valid
    best_r = torch.full((batch,), math.inf, dtype=torch.float64)
    if start is None:
        x = g(x_p)
        naive = _rel_rows(x - x_p, x)  # the residual of x_p, whose G(x_p) is the first iterate
        best_x, best_out = x.clone(), outs.pop()
        calls, evaluations = 1, iters
    else:  # the start is evaluated like any refined iterate
        x, naive = working(start).to(x_p.dtype), None
        best_x, best_out = x.clone(), None
        calls, evaluations = 0, 1 + iters
    for n in range(evaluations):
        gx = g(x)
        out = outs.pop()
        calls += 1
        f = gx - x
        r = _rel_rows(f, gx)
        if start is None or n > 0:
            history.append(float(r.max()))
        better = r < best_r
        best_x[better] = gx[better]
        if best_out is None:
            best_out = out.clone()
        best_out[better] = out[better]
        worse = (r > best_r) & torch.isfinite(best_r)
        best_r = torch.minimum(best_r, r)
        if float(r.max()) <= tol or not bool(torch.isfinite(r).all()) or n == evaluations - 1:
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
    residual = float((best_r if calls > 1 or start is not None else naive).max())
    if not bool(torch.isfinite(best_x).all()):
        residual = math.nan
    return best_x, InverseStats(residual, calls, history, best_out)


def step_budget(steps: int, k: int, iters: int, used: int, tol: float, max_iters: int) -> int:
    """Refinements allowed at inversion step k (cleanest first).

    With a tolerance the budget is pooled: the whole inversion may make ``steps * (1 + iters)``
    model calls (so at most ``1 + iters`` per step on average); a step may spend what earlier
    steps saved, keeping half the average, ``(1 + iters) // 2`` calls (at least 1), for each step
    still to come. The stiff clean end (inverted first) thus gets many iterations without
    starving the steps after it (a reserve of 4 let a 6-step inversion spend 106 of its 126 calls
    on the first step and leave the next at a residual of 8e-3), and easy steps stop at the
    tolerance. A predicted first iterate (`predicted_start`) changes nothing here: the step's first
    call evaluates it instead of x_p. Without a tolerance every step makes exactly `iters`
    refinements. `max_iters` caps one step on top of the pool. Lifting the cap (200) is no better
    split: it lets the bundled I2V model's clean end reach 1e-5 at guidance 6 (248 calls, 2 videos),
    but on the bundled T2V model at guidance 6 (8 videos) the clean end spends all 305 calls it may
    take, still ends at 9e-4, and the steps after it, held to their reserve, end above the tolerance
    too: round trip 2.4e-3 instead of 7.0e-4 (tools/study_clean_end.py, tools/bench_inversion.py
    --methods default; before issue 34's predicted first iterates). Nor is a lower one: the clean end
    needs 121 (T2V) and 199 (I2V) calls at guidance 1 with 8 videos, and the videos that converge at
    guidance 6 need 70-184 each (BENCHMARKS section 1, issue 34)."""
    if tol <= 0:
        return iters
    reserve = (steps - k - 1) * max(1, (1 + iters) // 2)
    left = steps * (1 + iters) - used - reserve - 1  # minus this step's first call
    return max(0, min(max_iters, left))


def predicted_start(x_p: torch.Tensor, outputs: Sequence[torch.Tensor], a: float, b: float) -> torch.Tensor | None:
    """A first iterate for the inverse step ``x_p = a x + b out(x)`` that costs no model call.

    `outputs` are the sampler's model outputs at the solutions of the inverse steps just solved
    (cleanest first, the last one at x_p's step): the model output at x is predicted as the last
    one (one given: the velocity reuse of FireFlow, the predictor of UniEdit-Flow's Uni-Inv) or
    extrapolated linearly from the last two, and the step solved for x with it:
    ``x = (x_p - b out) / a``. None (start from x_p) without outputs, or where a <= 0 (the
    sampler step ignores its input: no prediction of the output makes x determined)."""
    if not outputs or not a > 0.0:
        return None
    out = outputs[-1] if len(outputs) == 1 else 2 * outputs[-1] - outputs[-2]
    return (working(x_p) - b * out.to(working(x_p).dtype)) / a


def _anderson(xs: list[torch.Tensor], fs: list[torch.Tensor], damping: float) -> torch.Tensor:
    """Type-II Anderson mixing: minimise |f_k - dF gamma| over the residual differences, then
    ``x = x_k + beta f_k - (dX + beta dF) gamma``. Solved in float64 by least squares."""
    f_k, x_k = fs[-1].flatten().double(), xs[-1].flatten().double()
    d_f = torch.stack([(fs[i + 1] - fs[i]).flatten().double() for i in range(len(fs) - 1)], dim=1)
    d_x = torch.stack([(xs[i + 1] - xs[i]).flatten().double() for i in range(len(xs) - 1)], dim=1)
    gamma = torch.linalg.lstsq(d_f, f_k.unsqueeze(1)).solution.squeeze(1)
    new = x_k + damping * f_k - (d_x + damping * d_f) @ gamma
    return new.view_as(xs[-1]).to(xs[-1].dtype)


# ----------------------------------------------------------------------------- checks

NONFINITE_FIX = ("The model's output was NaN or infinite there: check that the input latent is finite, use fp32 "
                 "precision, a lower guidance, or more steps.")


def require_finite(x: torch.Tensor, what: str, i: int, steps: int, where: str, residual: float = 0.0) -> None:
    """Stop with the step where a latent (or an inverse step's residual) stopped being finite:
    NaN is never returned as a result."""
    bad = "latent" if not bool(torch.isfinite(x).all()) else "residual" if not math.isfinite(residual) else None
    if bad:
        raise errors.InputError(f"{what} step {i + 1} of {steps} ({where}) gave a non-finite {bad}", NONFINITE_FIX)


def check_invertible(grid: Grid) -> None:
    """An inverse step solves ``x = (x_next - b R(x)) / a'``: with a' = 0 the sampler step is the
    model's clean prediction alone (a single step from a zero-terminal-SNR start), which no noise
    maps back from. Refused before any model call."""
    for k, s in enumerate(reversed(grid.points)):
        if not s.a + s.b * s.skip > 0.0:
            raise errors.InputError(
                f"inversion step {k + 1} of {grid.steps} ({s.inverse_place}) cannot be inverted: the sampler step "
                "there ignores its input latent (one step from zero signal is the model's clean prediction alone)",
                "Invert with 2 or more steps.")


# ----------------------------------------------------------------------------- loops

def sample(denoise: Denoiser, x: torch.Tensor, grid: Grid, callback: Callable[[dict], None] | None = None,
           start: int = 0, blend: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
           offsets: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Sampling on `grid` from `x` at step `start` (0: noise; later: SDEdit): deterministic, or with
    `offsets[i]` added to step i (the noise maps of `vidinv.friendly`). `blend(i, x_next)` may
    replace each step's result (an edit mask, `vidinv.editmask`). `callback` receives
    ``{"i", "x", "denoised", **step.info}`` after each step."""
    x = working(x)
    for i in range(start, grid.steps):
        s = grid.points[i]
        x_i = x
        out = working(denoise(x_i, i))
        x = step(x_i, out, s.a, s.b)
        if offsets is not None:
            x = x + working(offsets[i]).to(x.dtype)
        if blend is not None:
            x = blend(i, x)
        require_finite(x, "sampling", i, grid.steps, s.place)
        if callback is not None:
            callback({"i": i, **s.info, "x": x, "denoised": s.x0[0] * x_i + s.x0[1] * out})
    return x


def invert(denoise: Denoiser, x0: torch.Tensor, grid: Grid, solver: Solver = Solver(),
           callback: Callable[[dict], None] | None = None) -> tuple[list[torch.Tensor], list[InverseStats]]:
    """Exact inversion of `sample`: x_0 (the clean end) -> the grid's first point, cleanest first.

    Each step is solved by `invert_step` in the split form of the module docstring, budgeted by
    `step_budget`. Returns the latents ``[x_0, x_1, ..., x_N]`` (x_k is the input of sampling step
    N - k; float32, or float64 if given) and the per-step stats. `callback` receives
    ``{"i", "x", "stats", **step.info}``. A step that cannot be inverted is refused before any model
    call, and a non-finite latent or residual stops the inversion at its step (InputError)."""
    check_invertible(grid)
    damping = 1.0 if solver.damping is None else solver.damping
    steps = grid.steps
    latents, stats = [working(x0)], []
    outputs: list[torch.Tensor] = []  # the sampler's model outputs at the last steps' solutions
    used = 0
    for k, i in enumerate(reversed(range(steps))):
        s = grid.points[i]

        def network_part(x: torch.Tensor, i: int, skip: float = s.skip) -> torch.Tensor:
            return working(denoise(x, i)) - skip * working(x)  # R(x) = out(x) - skip x

        budget = step_budget(steps, k, solver.iters, used, solver.tol, solver.max_iters)
        first = predicted_start(latents[-1], outputs, s.a, s.b) if budget > 0 else None
        x, st = invert_step(latents[-1], network_part if s.skip else denoise, i, s.a + s.b * s.skip, s.b, budget,
                            solver.tol, damping, solver.memory, start=first)
        require_finite(x, "inversion", k, steps, s.inverse_place, st.residual)
        used += st.calls
        outputs = (outputs + [st.output + s.skip * x])[-2:]  # out = R + skip x, at x's predecessor ~ x
        st.output = None
        latents.append(x)
        stats.append(st)
        if callback is not None:
            callback({"i": k, **s.info, "x": x, "stats": st})
    return latents, stats


def at(denoise: Callable, keys: Sequence) -> Denoiser:
    """A denoiser over step indices from one keyed by the step's model time (``keys[i]``)."""
    return lambda x, i: denoise(x, keys[i])
