"""Synthetic shape videos and the classifiers that grade them.

A video is one shape of one colour on black, moving in a straight line at constant speed.
Everything is deterministic by seed. Frames are float32 arrays ``[N, H, W, 3]`` in 0..1,
the layout of a ComfyUI IMAGE batch.

The classifiers read only pixels, so they grade generator output, VAE reconstructions,
inversion round trips and edits alike.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

COLOURS = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}

# Fill ratio (area / bounding-box area) of each shape drawn by `render`; the shape
# classifier picks the nearest one.
FILL_RATIO = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}

# Seeds at or above this value are never used for training; `heldout_specs` draws from them.
HELDOUT_SEED_BASE = 1_000_000


@dataclasses.dataclass(frozen=True)
class VideoSpec:
    shape: str
    colour: str
    direction: str
    radius: float  # half the side of the bounding box, pixels
    speed: float  # pixels per frame
    start: tuple[float, float]  # centre at frame 0, (x, y) pixels
    frames: int = 9
    height: int = 64
    width: int = 64

    @property
    def caption(self) -> str:
        return caption(self.shape, self.colour, self.direction)

    def centre(self, i: int) -> tuple[float, float]:
        dx, dy = DIRECTIONS[self.direction]
        return self.start[0] + dx * self.speed * i, self.start[1] + dy * self.speed * i


def caption(shape: str, colour: str, direction: str) -> str:
    return f"a {colour} {shape} moving {direction}"


def random_spec(seed: int, frames: int = 9, height: int = 64, width: int = 64,
                shape: str | None = None, colour: str | None = None,
                direction: str | None = None) -> VideoSpec:
    """A spec drawn from `seed`; any of shape, colour, direction may be fixed by the caller."""
    if (frames - 1) % 4:
        raise ValueError(f"frames must be 4k+1 (CogVideoX's temporal grid), got {frames}")
    rng = np.random.default_rng(seed)
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    colour = colour or list(COLOURS)[rng.integers(len(COLOURS))]
    direction = direction or list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
    short = min(height, width)
    radius = float(rng.uniform(0.21, 0.27) * short)
    speed = float(rng.uniform(0.5, 1.0) * (short - 2 * radius - 4) / (2 * (frames - 1)) + 1.0)
    start = start_point(rng, direction, speed * (frames - 1), radius + 2, height, width)
    return VideoSpec(shape, colour, direction, radius, speed, start, frames, height, width)


def start_point(rng: np.random.Generator, direction: str, travel: float, margin: float, height: int,
                width: int) -> tuple[float, float]:
    """A start (x, y) drawn from `rng` (x first) that keeps a shape moving `travel` pixels towards
    `direction` at least `margin` pixels inside the frame where it fits."""
    dx, dy = DIRECTIONS[direction]

    def coord(extent: float, d: float) -> float:
        lo, hi = margin, extent - margin
        if d > 0:
            hi -= travel
        elif d < 0:
            lo += travel
        return float(rng.uniform(lo, max(lo, hi)))

    return coord(width, dx), coord(height, dy)


def heldout_specs(count: int = 8, frames: int = 9, height: int = 64, width: int = 64) -> list[VideoSpec]:
    """The fixed held-out evaluation set: seeds never drawn by training, covering every
    shape, colour and direction in turn."""
    specs = []
    for i in range(count):
        specs.append(random_spec(HELDOUT_SEED_BASE + i, frames, height, width,
                                 shape=SHAPES[i % len(SHAPES)],
                                 colour=list(COLOURS)[i % len(COLOURS)],
                                 direction=list(DIRECTIONS)[(i // len(COLOURS) + i) % len(DIRECTIONS)]))
    return specs


def _shape_coverage(shape: str, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    u, v = xs - cx, ys - cy
    if shape == "circle":
        return (u * u + v * v) <= r * r
    if shape == "square":
        return (np.abs(u) <= r) & (np.abs(v) <= r)
    if shape == "triangle":  # apex up, base at the bottom of the bounding box
        inside_y = (v >= -r) & (v <= r)
        half_width = (v + r) / 2.0  # 0 at the apex, r at the base
        return inside_y & (np.abs(u) <= half_width)
    raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")


def render(spec: VideoSpec, supersample: int = 4) -> np.ndarray:
    """Frames ``[N, H, W, 3]`` float32 in 0..1, anti-aliased by supersampling."""
    s = supersample
    ys, xs = np.mgrid[0:spec.height * s, 0:spec.width * s].astype(np.float32)
    xs, ys = (xs + 0.5) / s, (ys + 0.5) / s
    colour = np.asarray(COLOURS[spec.colour], np.float32)
    out = np.empty((spec.frames, spec.height, spec.width, 3), np.float32)
    for i in range(spec.frames):
        cx, cy = spec.centre(i)
        cover = _shape_coverage(spec.shape, xs, ys, cx, cy, spec.radius).astype(np.float32)
        cover = cover.reshape(spec.height, s, spec.width, s).mean(axis=(1, 3))
        out[i] = cover[..., None] * colour
    return out


# ----------------------------------------------------------------------------- classifiers

def foreground_mask(frames: np.ndarray, threshold: float = 0.35) -> np.ndarray:
    """``[N, H, W]`` bool: pixels whose brightest channel exceeds `threshold`."""
    return np.asarray(frames).max(axis=-1) > threshold


def centroid_path(frames: np.ndarray) -> np.ndarray:
    """``[N, 2]`` (x, y) centroid of the foreground per frame, in pixels; NaN where empty."""
    return mask_centroids(foreground_mask(frames))


def mask_centroids(mask: np.ndarray) -> np.ndarray:
    """``[N, 2]`` (x, y) centroid of each frame of a ``[N, H, W]`` mask; NaN where empty."""
    n, h, w = mask.shape
    ys, xs = np.mgrid[0:h, 0:w]
    out = np.full((n, 2), np.nan, np.float64)
    for i in range(n):
        m = mask[i]
        if m.any():
            out[i] = xs[m].mean() + 0.5, ys[m].mean() + 0.5
    return out


def classify_colour(frames: np.ndarray) -> str | None:
    frames = np.asarray(frames)
    mask = foreground_mask(frames)
    if not mask.any():
        return None
    mean = frames[mask].mean(axis=0)
    mean = mean / max(float(mean.max()), 1e-6)  # compare hues, not brightness
    names = list(COLOURS)
    dist = [float(np.sum((mean - np.asarray(COLOURS[c])) ** 2)) for c in names]
    return names[int(np.argmin(dist))]


def fill_ratio(mask: np.ndarray) -> float | None:
    """Area over bounding-box area of the largest blob of one frame's mask."""
    if mask.sum() < 4:
        return None
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    return float(mask.sum() / box)


def classify_shape(frames: np.ndarray) -> str | None:
    return mask_shape(foreground_mask(frames))


def mask_shape(mask: np.ndarray) -> str | None:
    """The shape whose fill ratio is nearest the median over the frames of a ``[N, H, W]`` mask."""
    ratios = [r for r in (fill_ratio(m) for m in mask) if r is not None]
    if not ratios:
        return None
    r = float(np.median(ratios))
    return min(FILL_RATIO, key=lambda s: abs(FILL_RATIO[s] - r))


def classify_direction(frames: np.ndarray, min_travel: float = 2.0) -> str | None:
    return path_direction(centroid_path(frames), min_travel)


def path_direction(path: np.ndarray, min_travel: float = 2.0) -> str | None:
    """The direction of a ``[N, 2]`` centroid path (NaN rows skipped): the axis of the larger
    fitted travel, None below `min_travel` pixels."""
    ok = ~np.isnan(path[:, 0])
    if ok.sum() < 2:
        return None
    t = np.nonzero(ok)[0].astype(np.float64)
    slope = np.polyfit(t, path[ok], 1)[0]  # pixels per frame, (x, y)
    travel = slope * (len(path) - 1)
    axis = int(np.argmax(np.abs(travel)))
    if abs(travel[axis]) < min_travel:
        return None
    if axis == 0:
        return "right" if travel[0] > 0 else "left"
    return "down" if travel[1] > 0 else "up"


def describe(frames: np.ndarray) -> dict:
    return {"shape": classify_shape(frames), "colour": classify_colour(frames),
            "direction": classify_direction(frames)}


# ----------------------------------------------------------------------------- metrics

def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-frame IoU of the foreground masks of two videos."""
    return masks_iou(foreground_mask(a), foreground_mask(b))


def masks_iou(ma: np.ndarray, mb: np.ndarray) -> float:
    """Mean per-frame IoU of two ``[N, H, W]`` masks (a frame empty in both counts as 1)."""
    ious = []
    for x, y in zip(ma, mb):
        union = np.logical_or(x, y).sum()
        ious.append(1.0 if union == 0 else np.logical_and(x, y).sum() / union)
    return float(np.mean(ious))


def centroid_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance in pixels between the centroid paths; a frame empty in only one
    video counts as the frame diagonal."""
    return paths_error(centroid_path(a), centroid_path(b), *np.asarray(a).shape[1:3])


def paths_error(pa: np.ndarray, pb: np.ndarray, h: int, w: int) -> float:
    """Mean distance of two ``[N, 2]`` centroid paths in pixels; a frame empty in one path only
    counts as the diagonal of an h x w frame, in both as 0."""
    d = np.linalg.norm(pa - pb, axis=1)
    only_one = np.isnan(pa[:, 0]) ^ np.isnan(pb[:, 0])
    both_empty = np.isnan(pa[:, 0]) & np.isnan(pb[:, 0])
    d[only_one] = math.hypot(h, w)
    d[both_empty] = 0.0
    return float(np.mean(d))
