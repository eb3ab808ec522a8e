"""The shared part of the fixture scripts (tools/train_fixture.py, tools/train_svd_fixture.py,
tools/evaluate_fixture.py, tools/evaluate_svd_fixture.py): the training clips, the optimiser step
with its EMA, and the VAE round-trip measure. Not a script: the scripts import it; what the tests
also need (tokenizer, SVD conditioning, export) is in vidinv/fixture.py.
"""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from vidinv import pipeline, scenes, synthetic
from vidinv.family import Guidance
from vidinv.models import cogvideox

FRAMES, SIZE = 9, 64  # the training clips of both fixtures (random_spec needs 4k+1 frames; SVD itself: 14)


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def train_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, synthetic.HELDOUT_SEED_BASE))


def to_model_space(frames: np.ndarray) -> torch.Tensor:
    """[B, N, H, W, 3] in 0..1 -> [B, 3, N, H, W] in -1..1 (the VAE's input)."""
    return torch.from_numpy(frames).permute(0, 4, 1, 2, 3) * 2 - 1


def add_clip_arguments(p) -> None:
    """--frames / --height / --width: the training clips (a held-out model of another frame size)."""
    p.add_argument("--frames", type=int, default=FRAMES, help=f"frames per training clip, 4k+1 (bundled: {FRAMES})")
    p.add_argument("--height", type=int, default=SIZE, help=f"clip height in pixels, a multiple of 16 ({SIZE})")
    p.add_argument("--width", type=int, default=SIZE, help=f"clip width in pixels, a multiple of 16 ({SIZE})")


def clip_size(args) -> tuple[int, int, int]:
    """(frames, height, width) of --frames / --height / --width, refused before any work when the VAEs (4x in
    time, 8x in space) and the 2x2 patches cannot tile them or the VAE's --crop does not fit them."""
    frames, height, width = args.frames, args.height, args.width
    if frames < 5 or (frames - 1) % 4:
        raise SystemExit(f"--frames {frames}: needs 4k+1 frames, at least 5 (the VAE's 4x time compression)")
    for name, value in (("--height", height), ("--width", width)):
        if value < 32 or value % 16:
            raise SystemExit(f"{name} {value}: needs a multiple of 16 pixels, at least 32 (8x VAE, 2x2 patches)")
    if args.crop > min(height, width):
        raise SystemExit(f"--crop {args.crop}: the VAE's training crops must fit the {height} x {width} clips; "
                         f"give --crop {min(height, width)} or less")
    return frames, height, width


def training_clip(rng: np.random.Generator, scene_share: float = 0.0,
                  size: tuple[int, int, int] = (FRAMES, SIZE, SIZE)):
    """One training video of `size` (frames, height, width): with probability `scene_share` a two-object scene
    (`vidinv.scenes`), else a single shape on black (`vidinv.synthetic`); returns (spec, frames)."""
    if scene_share and rng.random() < scene_share:
        spec = scenes.random_scene(train_seed(rng), *size)
        return spec, scenes.render_scene(spec)
    spec = synthetic.random_spec(train_seed(rng), *size)
    return spec, synthetic.render(spec)


def vae_batch(rng: np.random.Generator, batch: int, crop: int, scene_share: float = 0.0,
              size: tuple[int, int, int] = (FRAMES, SIZE, SIZE)) -> torch.Tensor:
    """Random training videos of `size` (frames, height, width) cropped to `crop` pixels: single shapes around
    their path (their background is black and trivial; crops spend the compute on edges), scenes anywhere (their
    background is part of what must be kept)."""
    frames_n, height, width = size
    out = []
    for _ in range(batch):
        spec, frames = training_clip(rng, scene_share, size)
        if isinstance(spec, scenes.SceneSpec):
            x0, y0 = int(rng.integers(0, width - crop + 1)), int(rng.integers(0, height - crop + 1))
        else:
            mid = spec.centre(int(rng.integers(frames_n)))
            x0 = int(np.clip(round(mid[0] - crop / 2 + rng.integers(-6, 7)), 0, width - crop))
            y0 = int(np.clip(round(mid[1] - crop / 2 + rng.integers(-6, 7)), 0, height - crop))
        out.append(frames[:, y0:y0 + crop, x0:x0 + crop])
    return to_model_space(np.stack(out))


def object_weight(x: torch.Tensor, extra: float = 4.0) -> torch.Tensor:
    """Loss weight of VAE pixels ([B, 3, F, H, W] in -1..1): 1 + `extra` on object pixels (saturated,
    `scenes.SATURATION`), which are few and carry the shapes."""
    sat = (x.amax(dim=1, keepdim=True) - x.amin(dim=1, keepdim=True)) / 2
    return 1.0 + extra * (sat > scenes.SATURATION).float()


def optimise(loss, opt, sched, params, ema, ema_max: float, step: int) -> None:
    """One clipped optimiser step, then the EMA update (warm-up decay)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    decay = min(ema_max, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema, params):
            e.lerp_(p, 1 - decay)


def load_ema(params, ema) -> None:
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)


def save_trained(module, params, ema, folder: Path, record: dict, record_file: Path, start: float) -> None:
    """The end of a training stage: the EMA weights into `module`, saved to `folder`, and the stage's `record` with
    its seconds since `start` to `record_file`."""
    load_ema(params, ema)
    module.save_pretrained(folder)
    json.dump({"seconds": time.time() - start, **record}, open(record_file, "w"), indent=1)


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


# ----------------------------------------------------------------------------- evaluation

def accuracy(preds, specs, key) -> float:
    return float(np.mean([p[key] == getattr(s, key) for p, s in zip(preds, specs)]))


def evaluate_vae(model, count: int, encode=cogvideox.encode_video, decode=cogvideox.decode_video,
                 size: tuple[int, int, int] = (FRAMES, SIZE, SIZE)) -> dict:
    """VAE round trip of `count` held-out videos of `size` (frames, height, width; `encode` / `decode`: the model
    family's)."""
    specs = synthetic.heldout_specs(count, *size)
    psnrs, preds = [], []
    for spec in specs:
        frames = torch.from_numpy(synthetic.render(spec))
        rec = decode(model, encode(model, frames)).numpy()
        psnrs.append(synthetic.psnr(rec, frames.numpy()))
        preds.append(synthetic.describe(rec))
    return {"videos": count, "psnr_db": float(np.mean(psnrs)), "psnr_min_db": float(np.min(psnrs)),
            **{f"{k}_acc": accuracy(preds, specs, k) for k in ("shape", "colour", "direction")}}


def generation_accuracy(model, encode_text, decode, latent_shape: tuple, seeds: int, guidance: float,
                        steps: int = 50, chunk: int = 48) -> dict:
    """Every caption (shape x colour x direction) x `seeds` generated from fresh noise of
    `latent_shape` ``(F, C, h, w)`` (`encode_text` / `decode`: the model family's), `steps` steps at
    `guidance`: the classifiers' accuracies and the mean motion."""
    combos = list(itertools.product(synthetic.SHAPES, synthetic.COLOURS, synthetic.DIRECTIONS))
    specs = [synthetic.VideoSpec(s, c, d, 0, 0, (0, 0)) for s, c, d in combos for _ in range(seeds)]
    preds, motion = [], []
    start = time.time()
    for i in range(0, len(specs), chunk):
        part = specs[i:i + chunk]
        cond = encode_text(model, [s.caption for s in part])
        noise = torch.randn(len(part), *latent_shape, generator=torch.Generator().manual_seed(1000 + i))
        z = pipeline.sample(model, cond, noise, steps, Guidance(guidance))
        frames = decode(model, z).numpy()
        for video in frames.reshape(len(part), -1, *frames.shape[1:]):
            preds.append(synthetic.describe(video))
            path = synthetic.centroid_path(video)
            ok = ~np.isnan(path[:, 0])
            motion.append(float(np.linalg.norm(path[ok][-1] - path[ok][0])) if ok.sum() >= 2 else 0.0)
    return {"guidance": guidance, "steps": steps, "videos": len(specs), "seconds": time.time() - start,
            "mean_motion_px": float(np.mean(motion)),
            **{f"{k}_acc": accuracy(preds, specs, k) for k in ("shape", "colour", "direction")}}
