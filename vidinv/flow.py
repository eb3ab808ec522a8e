"""Deterministic flow-matching Euler sampling on a shifted sigma grid (Wan's sampler), as a grid of
affine steps for the family-neutral loop of `vidinv.solver`.

A flow model outputs the velocity ``v = noise - clean`` of the straight path
``x_sigma = (1 - sigma) clean + sigma noise``; its time input is ``1000 sigma``. One Euler step from
sigma_i to sigma_{i+1} (diffusers' `FlowMatchEulerDiscreteScheduler.step`)::

    x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v(x_i, sigma_i)

so a = 1, b = sigma_{i+1} - sigma_i (negative: sigma falls), skip = 0, and the clean estimate is
``x - sigma v``. The inverse step (`vidinv.solver.invert_step`) solves
``x_i = x_{i+1} - (sigma_{i+1} - sigma_i) v(x_i, sigma_i)`` by fixed-point iteration, the model
called at the noisier sigma_i as the sampler calls it: the same shape as DDIM's inverse. The last
step lands on sigma = 0 (the clean latent) and needs no special case; the first starts at sigma = 1,
pure noise.

The grid: ``FlowMatchEulerDiscreteScheduler.set_timesteps(steps)`` with the shift of the model's
scheduler config (``shift``; Wan 2.1 folders ship a UniPC config whose ``flow_shift`` is the same
setting), sigmas ``shift s / (1 + (shift - 1) s)`` of a linear ramp, then 0.
"""
from __future__ import annotations

import inspect
import json
import math

from . import errors, solver

KIND = "flow"
PREDICTION = "flow_prediction"


def shift_of(config: dict) -> float:
    """The flow shift of a scheduler config: FlowMatchEuler's ``shift``, or UniPC's ``flow_shift``."""
    value = config.get("shift", config.get("flow_shift", 1.0))
    if not (errors.is_number(value) and value > 0):
        raise errors.InputError(f"the scheduler's flow shift is {errors.shorten(json.dumps(value))}; it must be a finite "
                                "number > 0 (Wan 2.1: 3.0 at 480p, 5.0 at 720p)",
                                "Use the model's own scheduler_config.json.")
    return float(value)


def check_config(config: dict) -> None:
    """Refuse a scheduler config that does not describe a flow-matching model on a static shift."""
    prediction = config.get("prediction_type", PREDICTION)
    if prediction != PREDICTION or config.get("use_flow_sigmas") is False:
        raise errors.InputError(f"the scheduler is not a flow-matching one (prediction_type {prediction!r}, "
                                f"use_flow_sigmas {config.get('use_flow_sigmas')!r})",
                                "Use a Wan folder's own scheduler (flow_prediction over flow sigmas).")
    if config.get("use_dynamic_shifting"):
        raise errors.InputError("the scheduler shifts its sigmas dynamically (use_dynamic_shifting), which needs a "
                                "resolution-dependent mu", "Use a scheduler config with a fixed shift.")


def sigmas_from_config(config: dict, steps: int) -> tuple[list[float], list[float]]:
    """(N+1 sigmas noisiest first ending at 0, N model times ``1000 sigma``) of the Euler sampler."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    check_config(config)
    n = int(config.get("num_train_timesteps", 1000))
    if not 1 <= steps <= n:
        raise errors.InputError(f"steps {steps} must be between 1 and {n} (the model's training timesteps)",
                                "Use fewer steps.")
    known = inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters
    kwargs = {k: v for k, v in config.items() if k in known and k not in ("self", "shift")}
    sched = FlowMatchEulerDiscreteScheduler(**kwargs, shift=shift_of(config))
    sched.set_timesteps(steps)
    sigmas = [float(s) for s in sched.sigmas]
    if any(not a > b for a, b in zip(sigmas, sigmas[1:])) or sigmas[-1] != 0.0 or not math.isfinite(sigmas[0]):
        raise errors.InputError(f"the scheduler's sigmas {sigmas[:2]}...{sigmas[-2:]} do not fall strictly to 0",
                                "Use the model's own scheduler config.")
    return sigmas, [float(t) for t in sched.timesteps]


def steps_grid(sigmas, timesteps) -> solver.Grid:
    """The Euler steps on `sigmas` for `vidinv.solver`: out = v, a = 1, b = sigma_next - sigma."""
    points = tuple(solver.Step(1.0, nxt - sigma, 0.0, (1.0, -sigma), {"sigma": sigma}, f"sigma {sigma:.4g}",
                               f"sigma {nxt:.4g} -> {sigma:.4g}") for sigma, nxt in zip(sigmas, sigmas[1:]))
    return solver.Grid(KIND, points, tuple(timesteps), PREDICTION, 1.0, tuple(float(s) for s in sigmas),
                       tuple((1.0 - float(s), float(s)) for s in sigmas))


def sampler_grid(config: dict, steps: int) -> solver.Grid:
    return steps_grid(*sigmas_from_config(config, steps))
