"""Two-object scenes on a moving textured background, and the per-object measures of an edit.

A scene is two shapes (`synthetic.VideoSpec` each: own shape, colour, straight motion; the second
drawn in front, so paths may cross) over a grey background of a gradient and two plane waves that
pans at constant velocity, as a camera would. Colours stay the four saturated primaries of
`synthetic.COLOURS` and the background stays nearly grey, so any pixel-only reader can tell object
from background by saturation and one object from the other by hue; the renderer also knows each
object's visible mask.

Frames are float32 ``[N, H, W, 3]`` in 0..1 like `synthetic.render`. The single-object videos on
black of `synthetic` read the same way: `object_mask` is their foreground mask too.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import synthetic

# Held-out scenes draw from seeds at and above this (training draws below synthetic.HELDOUT_SEED_BASE).
HELDOUT_SCENE_BASE = synthetic.HELDOUT_SEED_BASE + 500_000
SATURATION = 0.3  # max - min channel above which a pixel belongs to an object


@dataclasses.dataclass(frozen=True)
class Background:
    base: tuple[float, float, float]  # mean RGB, nearly grey
    gradient: tuple[float, float]  # change of brightness per pixel along x and y
    waves: tuple[tuple[float, float, float, float], ...]  # (kx, ky radians per pixel, amplitude, phase)
    pan: tuple[float, float]  # pixels per frame the camera moves, (x, y)

    def brightness(self, xs: np.ndarray, ys: np.ndarray, frame: int) -> np.ndarray:
        x, y = xs + self.pan[0] * frame, ys + self.pan[1] * frame
        out = self.gradient[0] * (x - 32.0) + self.gradient[1] * (y - 32.0)
        for kx, ky, amp, phase in self.waves:
            out = out + amp * np.sin(kx * x + ky * y + phase)
        return out


@dataclasses.dataclass(frozen=True)
class SceneSpec:
    objects: tuple[synthetic.VideoSpec, ...]  # back to front
    background: Background

    @property
    def caption(self) -> str:
        return " and ".join(o.caption for o in self.objects)

    @property
    def frames(self) -> int:
        return self.objects[0].frames

    @property
    def size(self) -> tuple[int, int]:
        return self.objects[0].height, self.objects[0].width

    def recoloured(self, index: int, colour: str) -> "SceneSpec":
        objs = list(self.objects)
        objs[index] = dataclasses.replace(objs[index], colour=colour)
        return dataclasses.replace(self, objects=tuple(objs))


def _object(rng: np.random.Generator, colour: str, frames: int, height: int, width: int,
            shape: str | None = None, direction: str | None = None) -> synthetic.VideoSpec:
    shape = shape or synthetic.SHAPES[rng.integers(len(synthetic.SHAPES))]
    direction = direction or list(synthetic.DIRECTIONS)[rng.integers(len(synthetic.DIRECTIONS))]
    short = min(height, width)
    radius = float(rng.uniform(0.14, 0.19) * short)
    speed = float(rng.uniform(1.0, 2.0))
    start = synthetic.start_point(rng, direction, speed * (frames - 1), radius + 1, height, width)
    return synthetic.VideoSpec(shape, colour, direction, radius, speed, start, frames, height, width)


def _background(rng: np.random.Generator) -> Background:
    grey = float(rng.uniform(0.18, 0.32))
    base = tuple(float(grey + rng.uniform(-0.03, 0.03)) for _ in range(3))
    angle = rng.uniform(0, 2 * math.pi)
    slope = float(rng.uniform(0.0015, 0.0035))
    waves = []
    for _ in range(2):
        k = 2 * math.pi / rng.uniform(10.0, 28.0)
        a = rng.uniform(0, 2 * math.pi)
        waves.append((float(k * math.cos(a)), float(k * math.sin(a)), float(rng.uniform(0.03, 0.07)),
                      float(rng.uniform(0, 2 * math.pi))))
    pan_angle, pan_speed = rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 1.5)
    return Background(base, (float(slope * math.cos(angle)), float(slope * math.sin(angle))), tuple(waves),
                      (float(pan_speed * math.cos(pan_angle)), float(pan_speed * math.sin(pan_angle))))


def random_scene(seed: int, frames: int = 9, height: int = 64, width: int = 64,
                 colours: tuple[str, str] | None = None, shapes: tuple[str, str] | None = None,
                 directions: tuple[str, str] | None = None) -> SceneSpec:
    """Two objects of different colours over a panning background, drawn from `seed`; colours,
    shapes and directions may be fixed by the caller."""
    if (frames - 1) % 4:
        raise ValueError(f"frames must be 4k+1 (CogVideoX's temporal grid), got {frames}")
    rng = np.random.default_rng(seed)
    if colours is None:
        first, second = rng.choice(len(synthetic.COLOURS), 2, replace=False)
        colours = (list(synthetic.COLOURS)[first], list(synthetic.COLOURS)[second])
    if colours[0] == colours[1]:
        raise ValueError(f"the two objects of a scene need different colours, got {colours}")
    shapes = shapes or (None, None)
    directions = directions or (None, None)
    objects = tuple(_object(rng, c, frames, height, width, s, d) for c, s, d in zip(colours, shapes, directions))
    return SceneSpec(objects, _background(rng))


def heldout_scenes(count: int = 8, frames: int = 9, height: int = 64, width: int = 64) -> list[SceneSpec]:
    """The fixed held-out scenes: seeds never drawn by training; colours, shapes and directions in turn."""
    names, dirs = list(synthetic.COLOURS), list(synthetic.DIRECTIONS)
    out = []
    for i in range(count):
        colours = (names[i % 4], names[(i + 1 + (i // 4) % 3) % 4])
        shapes = (synthetic.SHAPES[i % 3], synthetic.SHAPES[(i + 1) % 3])
        directions = (dirs[i % 4], dirs[(i + 1 + i // 4) % 4])
        out.append(random_scene(HELDOUT_SCENE_BASE + i, frames, height, width, colours, shapes, directions))
    return out


def edit_target(spec: SceneSpec, index: int = 0) -> str:
    """The colour a colour edit of object `index` asks for: the next colour after its own that no
    object of the scene has (so the two objects stay apart by hue)."""
    names = list(synthetic.COLOURS)
    used = {o.colour for o in spec.objects}
    start = names.index(spec.objects[index].colour)
    after = [names[(start + k) % len(names)] for k in range(1, len(names))]
    return next(c for c in after if c not in used)


# ----------------------------------------------------------------------------- rendering

def _coverages(spec: SceneSpec, supersample: int) -> list[np.ndarray]:
    """Per object, ``[N, H, W]`` float coverage of its visible part (objects in front occlude)."""
    s = supersample
    h, w = spec.size
    ys, xs = np.mgrid[0:h * s, 0:w * s].astype(np.float32)
    xs, ys = (xs + 0.5) / s, (ys + 0.5) / s
    raw = [np.stack([synthetic._shape_coverage(o.shape, xs, ys, *o.centre(i), o.radius)
                     for i in range(spec.frames)]) for o in spec.objects]
    visible, front = [], np.zeros_like(raw[0])
    for cover in reversed(raw):
        visible.append(cover & ~front)
        front = front | cover
    visible.reverse()
    return [v.reshape(spec.frames, h, s, w, s).mean(axis=(2, 4)) for v in visible]


def render_scene(spec: SceneSpec, supersample: int = 4) -> np.ndarray:
    """Frames ``[N, H, W, 3]`` float32 in 0..1, anti-aliased by supersampling."""
    h, w = spec.size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    bg = np.stack([spec.background.brightness(xs, ys, i) for i in range(spec.frames)])
    out = np.clip(bg[..., None] + np.asarray(spec.background.base, np.float32), 0.0, 1.0)
    for obj, cover in zip(spec.objects, _coverages(spec, supersample)):
        colour = np.asarray(synthetic.COLOURS[obj.colour], np.float32)
        out = out * (1 - cover[..., None]) + cover[..., None] * colour
    return out.astype(np.float32)


def true_masks(spec: SceneSpec) -> np.ndarray:
    """``[K, N, H, W]`` bool: where each object is visible (more than half a pixel covered)."""
    return np.stack([c > 0.5 for c in _coverages(spec, 4)])


# ----------------------------------------------------------------------------- reading pixels

def colour_labels(frames: np.ndarray) -> np.ndarray:
    """``[N, H, W]`` int: per pixel, the index in `synthetic.COLOURS` of the nearest hue, -1 where
    the pixel is not saturated enough to belong to an object."""
    f = np.asarray(frames, np.float32)
    hi, lo = f.max(axis=-1), f.min(axis=-1)
    chroma = (f - lo[..., None]) / np.maximum(hi - lo, 1e-6)[..., None]
    ref = np.asarray(list(synthetic.COLOURS.values()), np.float32)
    labels = np.argmin(((chroma[..., None, :] - ref) ** 2).sum(axis=-1), axis=-1)
    return np.where(hi - lo > SATURATION, labels, -1)


def object_mask(frames: np.ndarray, colour: str | None = None, exclude: str | None = None) -> np.ndarray:
    """``[N, H, W]`` bool: saturated pixels of hue `colour` (any hue when None), minus those of hue
    `exclude`."""
    labels = colour_labels(frames)
    names = list(synthetic.COLOURS)
    mask = labels >= 0 if colour is None else labels == names.index(colour)
    if exclude is not None:
        mask &= labels != names.index(exclude)
    return mask


def region_colour(frames: np.ndarray, mask: np.ndarray) -> str | None:
    """The nearest colour name to the mean hue of `frames` inside `mask`; None for an empty mask."""
    if not mask.any():
        return None
    mean = np.asarray(frames)[mask].mean(axis=0)
    mean = (mean - mean.min()) / max(float(mean.max() - mean.min()), 1e-6)
    names = list(synthetic.COLOURS)
    return names[int(np.argmin([np.sum((mean - np.asarray(synthetic.COLOURS[c])) ** 2) for c in names]))]


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a ``[N, H, W]`` mask by `pixels` in the chessboard metric (per frame)."""
    out = mask.copy()
    for _ in range(pixels):
        grown = out.copy()
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        grown[:, :, 1:] |= out[:, :, :-1]
        grown[:, :, :-1] |= out[:, :, 1:]
        grown[:, 1:, 1:] |= out[:, :-1, :-1]
        grown[:, :-1, :-1] |= out[:, 1:, 1:]
        grown[:, 1:, :-1] |= out[:, :-1, 1:]
        grown[:, :-1, 1:] |= out[:, 1:, :-1]
        out = grown
    return out


def score_edit(out: np.ndarray, recon: np.ndarray, spec: SceneSpec, index: int, target: str) -> dict:
    """One colour edit of object `index` to `target`: `out` the decoded edit, `recon` the source's
    VAE reconstruction (both ``[N, H, W, 3]``).

    edited object (everything saturated that is not the other object's hue): target hit, IoU and
    centroid path error against the source's; untouched object (its own hue): colour kept (at least
    80 % of its source pixels still read as its colour), shape kept (same class as in the source),
    IoU; background: PSNR outside both edited masks grown by 2 px; flicker: mean absolute error of
    the frame-to-frame differences against the source's, in 0..255 levels."""
    other = spec.objects[1 - index].colour
    e_src, e_out = object_mask(recon, exclude=other), object_mask(out, exclude=other)
    u_src, u_out = object_mask(recon, other), object_mask(out, other)
    keep = ~dilate(e_src | e_out, 2)
    diff = np.asarray(out, np.float64) - np.asarray(recon, np.float64)
    mse = float(np.mean(diff[keep] ** 2)) if keep.any() else 0.0
    still = (u_out & u_src).sum() / max(int(u_src.sum()), 1)
    flicker = np.abs(np.diff(diff, axis=0)).mean() * 255
    path = synthetic.paths_error(synthetic.mask_centroids(e_out), synthetic.mask_centroids(e_src), *e_out.shape[1:])
    return {"hit": region_colour(out, e_out) == target,
            "edited_iou": synthetic.masks_iou(e_out, e_src), "edited_path_px": path,
            "other_colour_kept": bool(still >= 0.8),
            "other_shape_kept": synthetic.mask_shape(u_out) == synthetic.mask_shape(u_src),
            "other_iou": synthetic.masks_iou(u_out, u_src),
            "background_psnr_db": float("inf") if mse == 0 else 10 * math.log10(1 / mse),
            "flicker": float(flicker)}


def describe_scene(frames: np.ndarray, colours: tuple[str, ...]) -> list[dict]:
    """What each object of the given colours looks like in `frames`: present, shape, direction
    (read from its own hue's mask)."""
    out = []
    for c in colours:
        m = object_mask(frames, c)
        out.append({"colour": c if m.sum() >= 4 * len(frames) else None, "shape": synthetic.mask_shape(m),
                    "direction": synthetic.path_direction(synthetic.mask_centroids(m))})
    return out
