"""Fit IMAGE frames to what a video model accepts: 4k+1 frames, sizes on its grid.

Pure functions over ``[N, H, W, 3]`` float tensors (ComfyUI's IMAGE layout). Each returns the
fitted frames and a sentence saying what was given and what is used."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import budget, errors

FRAME_POLICIES = ("trim to 4k+1", "error")
SIZE_POLICIES = ("resize and crop", "stretch", "error")


def check_images(frames, what: str = "images") -> torch.Tensor:
    """IMAGE frames ``[N, H, W, 3 or 4]`` with at least one frame of at least one pixel, as RGB
    (an alpha channel is dropped: video models take colour only)."""
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] not in (3, 4):
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise errors.InputError(f"{what}: expected IMAGE frames [N, H, W, 3], got {shape}",
                                "Connect video frames, for example from Get Video Components.")
    n, h, w, _ = frames.shape
    if n == 0:
        raise errors.InputError(f"{what}: the image batch is empty (0 frames)",
                                "Connect at least one frame (check the node that selects or trims the frames).")
    if h == 0 or w == 0:
        raise errors.InputError(f"{what}: the frames are {w}x{h} pixels (zero-size)",
                                "Connect frames with at least one pixel in each side.")
    if not frames.is_floating_point():
        dtype = str(frames.dtype).replace("torch.", "")
        raise errors.InputError(f"{what}: IMAGE frames must be floating point 0..1, got {dtype}",
                                "Connect frames from a ComfyUI image node.")
    if not torch.isfinite(frames).all():
        raise errors.InputError(f"{what}: the frames hold NaN or infinite pixel values",
                                "Check the node that made the frames.")
    return frames[..., :3]


def fit_frame_count(frames: torch.Tensor, temporal_factor: int, policy: str = "trim to 4k+1",
                    minimum_latent_frames: int = 2) -> tuple[torch.Tensor, str]:
    """Trim to the largest ``temporal_factor * k + 1`` frames, or refuse (policy 'error')."""
    n = frames.shape[0]
    need = temporal_factor * (minimum_latent_frames - 1) + 1
    if n < need:
        raise errors.InputError(f"the video has {n} frame(s); this model needs at least {need} "
                                f"({temporal_factor}k+1 frames, k >= {minimum_latent_frames - 1})",
                                f"Load a clip of at least {need} frames.")
    use = (n - 1) // temporal_factor * temporal_factor + 1
    if use == n:
        return frames, f"{n} frames used ({temporal_factor}k+1)"
    if policy == "error":
        raise errors.InputError(f"the video has {n} frames, but the model needs {temporal_factor}k+1 frames",
                                f"Cut it to {use} frames (or {use + temporal_factor}), or set frames to "
                                "'trim to 4k+1'.")
    if policy != "trim to 4k+1":
        raise errors.InputError(f"frames policy {policy!r} is not one of {FRAME_POLICIES}", "Pick one of them.")
    return frames[:use], f"{n} frames given, first {use} used ({temporal_factor}k+1)"


def fit_size(frames: torch.Tensor, height: int, width: int, multiple: int, policy: str = "resize and crop",
             exact: tuple[int, int] | None = None) -> tuple[torch.Tensor, str]:
    """Bring frames to ``height x width`` (both multiples of `multiple`).

    'resize and crop' scales to cover the target and crops the centre, 'stretch' resizes
    ignoring the aspect ratio, 'error' refuses any other size. `exact` is the only size a model
    accepts at all (CogVideoX-5B-I2V's learned position embeddings)."""
    n, h, w, _ = frames.shape
    if height % multiple or width % multiple or height <= 0 or width <= 0:
        raise errors.InputError(f"size {width}x{height} is not a positive multiple of {multiple} in both sides "
                                f"(VAE compression x patch size)",
                                f"Use for example {round(width / multiple) * multiple or multiple}x"
                                f"{round(height / multiple) * multiple or multiple}, or 0 for the model's native size.")
    if exact is not None and (height, width) != exact:
        raise errors.InputError(f"this model takes only {exact[1]}x{exact[0]} (learned position embeddings), "
                                f"{width}x{height} was asked", "Set width and height to 0 (native size).")
    if (h, w) == (height, width):
        return frames, f"size {w}x{h} used as given"
    if policy == "error":
        raise errors.InputError(f"the video is {w}x{h}, the model needs {width}x{height} here",
                                "Resize the video, or set size to 'resize and crop'.")
    if policy not in SIZE_POLICIES:
        raise errors.InputError(f"size policy {policy!r} is not one of {SIZE_POLICIES}", "Pick one of them.")
    budget.require(budget.resize_bytes(n, height, width, h, w), f"resizing {n} frames of {w}x{h} to {width}x{height}",
                   "Choose a smaller width and height (0 = the model's native size) or fewer frames", frames.device)
    x = frames[..., :3].permute(0, 3, 1, 2)
    if policy == "stretch":
        out = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        note = f"{w}x{h} stretched to {width}x{height}"
    else:
        scale = max(height / h, width / w)
        sh, sw = max(height, round(h * scale)), max(width, round(w * scale))
        out = F.interpolate(x, size=(sh, sw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (sh - height) // 2, (sw - width) // 2
        out = out[:, :, top:top + height, left:left + width]
        note = f"{w}x{h} resized to {sw}x{sh} and centre-cropped to {width}x{height}"
    return out.permute(0, 2, 3, 1).clamp(0, 1).contiguous(), note
