"""A memory bound before heavy work, from the sizes themselves.

A node that allocates in proportion to its inputs (frame size and count, steps x latent) estimates
what it will need from the shapes and refuses, before allocating, what exceeds the budget: half of
the memory free where the work runs (ComfyUI's model management tells the nodes, see
`nodes.host`; otherwise the operating system's available memory, or the CUDA device's free memory),
or a fixed number of GiB from the environment variable ``VIDINV_MEMORY_BUDGET_GB`` (documented in
README, "Errors"). Estimates count the tensors a stage holds at once; they are bounds of the right
order, not allocator-exact."""
from __future__ import annotations

import math
import os
from typing import Callable

import torch

from . import errors

ENV = "VIDINV_MEMORY_BUDGET_GB"
SHARE = 0.5  # of the free memory, when no budget is set


def _available_bytes(device) -> int | None:
    """What the OS (or CUDA) says is free where `device` is; None when it cannot tell."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


free_memory: Callable[[object], int | None] = _available_bytes  # the host installs ComfyUI's when it runs


def limit(device=None) -> int | None:
    """The budget in bytes for work on `device`: ``VIDINV_MEMORY_BUDGET_GB`` if set, else half of the
    free memory there; None when neither is known (nothing is refused)."""
    raw = os.environ.get(ENV, "").strip()
    if raw:
        try:
            gb = float(raw)
        except ValueError:
            gb = -1.0
        if not (gb > 0 and math.isfinite(gb)):
            raise errors.InputError(f"{ENV}={errors.shorten(raw)} is not a number of GiB > 0",
                                    f"Set {ENV} to a positive number (e.g. 16), or unset it for half the free memory.")
        return int(gb * 2**30)
    free = free_memory(device)
    return None if free is None else int(free * SHARE)


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.0f} MiB"


def require(need: int, what: str, reduce: str, device=None) -> None:
    """Refuse work estimated at `need` bytes that exceeds the budget for `device`: says what was asked
    (`what`), the estimate and the budget, and what to reduce (`reduce`)."""
    budget = limit(device)
    if budget is not None and need > budget:
        source = f"{ENV}" if os.environ.get(ENV, "").strip() else "half the free memory"
        raise errors.InputError(f"{what} needs about {gib(need)}, more than the memory budget of {gib(budget)} "
                                f"({source})", f"{reduce} (or set {ENV} to allow more).")


# ----------------------------------------------------------------------------- estimates

FLOAT = 4  # bytes of a float32 value


def frames_bytes(frames: int, height: int, width: int, channels: int = 3, itemsize: int = FLOAT) -> int:
    return int(frames) * int(height) * int(width) * int(channels) * int(itemsize)


def resize_bytes(frames: int, height: int, width: int, src_height: int, src_width: int) -> int:
    """Fitting frames to a size: the scaled frames before the crop (at most the cover of the target),
    the crop and its contiguous copy (the target size)."""
    scale = max(height / max(src_height, 1), width / max(src_width, 1))
    cover = frames_bytes(frames, max(height, round(src_height * scale)), max(width, round(src_width * scale)))
    return cover + 2 * frames_bytes(frames, height, width)


def vae_bytes(frames: int, height: int, width: int, channels: int, itemsize: int, tiled: bool, tile: tuple) -> int:
    """A VAE's activations over `frames` frames at once: a few maps of `channels` (its first level's
    width) at full resolution, or at the tile's resolution when tiled."""
    h, w = (min(height, tile[0]), min(width, tile[1])) if tiled else (height, width)
    return 4 * frames_bytes(frames, h, w, channels, itemsize)


def trajectory_bytes(steps: int, latent_numel: int, itemsize: int = FLOAT, maps: bool = False) -> int:
    """The latents a trajectory holds, steps + 1 of them (and one noise map per step when `maps`)."""
    return (int(steps) + 1 + (int(steps) if maps else 0)) * int(latent_numel) * int(itemsize)


def require_trajectory(steps: int, latent: torch.Tensor, maps: bool = False, what: str = "the inversion") -> None:
    """Refuse an inversion whose trajectory would not fit the budget: its latents (and noise maps) in
    float32 while the loop runs, and once more while they are stacked into the trajectory (CPU)."""
    need = 2 * trajectory_bytes(steps, latent.numel(), FLOAT, maps)
    require(need, f"{what} at {steps} steps of a {'x'.join(map(str, latent.shape))} latent (its trajectory)",
            "Use fewer steps, fewer frames or a smaller size", "cpu")
