"""Measure the quality gates of the bundled model (issue: tiny trained CogVideoX fixture).

    python tools/evaluate_fixture.py [--model assets/tiny-cogvideox] [--only vae|generation]

VAE: held-out videos encoded and decoded through the pack's own VAE functions; PSNR and the
shape / colour / direction classifiers on the reconstructions.
Generation: every caption (4 colours x 3 shapes x 4 directions) x seeds, 50 DDIM steps, at
guidance 5 and 1; classifier accuracies and mean motion.
Scenes (a model that knows "... and ..." captions: the two-object scenes of vidinv.scenes): VAE
PSNR on held-out scenes; generation of held-out scene captions read per object (its colour
present, its direction, its shape); SDEdit from 90 % of the steps with the first object's colour
word changed (`scenes.score_edit`: the edited object's IoU with the source).
Results go to stdout as JSON and to <model>/quality.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.benchkit import sdedit  # noqa: E402
from tools.fixturekit import accuracy, evaluate_vae, generation_accuracy  # noqa: E402
from vidinv.family import Guidance  # noqa: E402
from vidinv import pipeline, scenes, synthetic  # noqa: E402
from vidinv.models import cogvideox  # noqa: E402


def latent_shape(model) -> tuple:
    """(F, C, h, w) of a video of the length the transformer was configured for."""
    h, w = model.native_size
    f = (int(model.tcfg["sample_frames"]) - 1) // model.temporal_factor + 1
    return f, model.latent_channels, h // model.spatial_factor, w // model.spatial_factor


def evaluate_generation(model, seeds: int, guidance: float, steps: int = 50, chunk: int = 48) -> dict:
    return generation_accuracy(model, cogvideox.encode_text, cogvideox.decode_video, latent_shape(model), seeds,
                               guidance, steps, chunk)


def evaluate_i2v(model, count: int, guidance: float = 5.0, steps: int = 50) -> dict:
    """Held-out videos regenerated from their first frame and caption."""
    specs = synthetic.heldout_specs(count)
    frames = [torch.from_numpy(synthetic.render(s)) for s in specs]
    h, w = model.native_size
    shape = latent_shape(model)
    img = torch.cat([cogvideox.encode_image_latents(model, fr, shape[0]) for fr in frames])
    cond = cogvideox.encode_text(model, [s.caption for s in specs])
    noise = torch.randn(count, *shape, generator=torch.Generator().manual_seed(7))
    out = cogvideox.decode_video(model,
                                 pipeline.sample(model, cond, noise, steps, Guidance(guidance), image_latents=img))
    out = out.numpy().reshape(count, -1, h, w, 3)
    preds = [synthetic.describe(v) for v in out]
    return {"guidance": guidance, "steps": steps, "videos": count,
            "first_frame_psnr_db": float(np.mean([synthetic.psnr(v[0], fr[0].numpy()) for v, fr in zip(out, frames)])),
            "mask_iou": float(np.mean([synthetic.mask_iou(v, fr.numpy()) for v, fr in zip(out, frames)])),
            **{f"{k}_acc": accuracy(preds, specs, k) for k in ("shape", "colour", "direction")}}


def evaluate_scene_vae(model, count: int) -> dict:
    psnrs = []
    for spec in scenes.heldout_scenes(count):
        frames = torch.from_numpy(scenes.render_scene(spec))
        rec = cogvideox.decode_video(model, cogvideox.encode_video(model, frames)).numpy()
        psnrs.append(synthetic.psnr(rec, frames.numpy()))
    return {"videos": count, "psnr_db": float(np.mean(psnrs)), "psnr_min_db": float(np.min(psnrs))}


def evaluate_scene_generation(model, count: int, guidance: float, steps: int = 50) -> dict:
    """Held-out scene captions from fresh noise; each object read from its own hue."""
    specs = scenes.heldout_scenes(count)
    cond = cogvideox.encode_text(model, [s.caption for s in specs])
    noise = torch.randn(count, *latent_shape(model), generator=torch.Generator().manual_seed(11))
    out = cogvideox.decode_video(model, pipeline.sample(model, cond, noise, steps, Guidance(guidance)))
    out = out.numpy().reshape(count, -1, *model.native_size, 3)
    hits = {"colour": [], "direction": [], "shape": []}
    for video, spec in zip(out, specs):
        for obj, seen in zip(spec.objects, scenes.describe_scene(video, tuple(o.colour for o in spec.objects))):
            for key in hits:
                hits[key].append(seen[key] == getattr(obj, key))
    follows = [c and d for c, d in zip(hits["colour"], hits["direction"])]
    return {"guidance": guidance, "steps": steps, "videos": count, "objects": len(follows),
            "follows_caption": float(np.mean(follows)), **{f"{k}_acc": float(np.mean(v)) for k, v in hits.items()}}


def evaluate_scene_sdedit(model, count: int, guidance: float, start: float = 0.9, steps: int = 50) -> dict:
    """SDEdit of held-out scenes: each source noised to the level at fraction `start` of the steps
    (fresh noise), then the caption with the first object's colour changed sampled over the rest."""
    specs = scenes.heldout_scenes(count)
    frames = [torch.from_numpy(scenes.render_scene(s)) for s in specs]
    x0 = torch.cat([cogvideox.encode_video(model, f) for f in frames])
    recon = cogvideox.decode_video(model, x0).numpy().reshape(count, -1, *model.native_size, 3)
    targets = [scenes.edit_target(s) for s in specs]
    cond = cogvideox.encode_text(model, [s.recoloured(0, t).caption for s, t in zip(specs, targets)])
    z = sdedit(model, cond, x0, steps, guidance, 1 - start, seed=13)
    out = cogvideox.decode_video(model, z).numpy().reshape(recon.shape)
    scores = [scenes.score_edit(o, r, s, 0, t) for o, r, s, t in zip(out, recon, specs, targets)]
    return {"guidance": guidance, "start": start, "steps": steps, "videos": count,
            **{key: float(np.mean([sc[key] for sc in scores])) for key in scores[0]}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "assets" / "tiny-cogvideox"))
    p.add_argument("--only", choices=["vae", "generation", "scenes"])
    p.add_argument("--scene-edits", type=int, default=16, help="held-out scenes of the SDEdit gate")
    p.add_argument("--vae-videos", type=int, default=48)
    p.add_argument("--seeds", type=int, default=2, help="seeds per caption (48 captions)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = cogvideox.load(args.model, "fp32")
    result = {"model": model.describe()}
    if model.is_i2v:
        result["i2v"] = evaluate_i2v(model, args.vae_videos)
        print(json.dumps(result["i2v"]), flush=True)
        if not args.no_write:
            (Path(args.model) / "quality.json").write_text(json.dumps(result, indent=1))
        return result
    if args.only in (None, "vae"):
        result["vae"] = evaluate_vae(model, args.vae_videos)
        print(json.dumps(result["vae"]), flush=True)
    if args.only in (None, "generation"):
        result["generation"] = [evaluate_generation(model, args.seeds, g) for g in (5.0, 1.0)]
        print(json.dumps(result["generation"]), flush=True)
    if "and" in model.tokenizer.get_vocab() and args.only in (None, "scenes"):
        result["scenes"] = {"vae": evaluate_scene_vae(model, args.vae_videos),
                            "generation": [evaluate_scene_generation(model, args.vae_videos, g) for g in (5.0, 1.0)],
                            "sdedit": [evaluate_scene_sdedit(model, args.scene_edits, g) for g in (5.0, 1.0)]}
        print(json.dumps(result["scenes"]), flush=True)
    if not args.no_write and args.only is None:
        (Path(args.model) / "quality.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
