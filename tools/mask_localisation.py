"""Does an edit mask find the object the edit names? Measured on the two-object scenes, where the
renderer knows each object's pixels (`vidinv.scenes.true_masks`).

    python tools/mask_localisation.py --model FOLDER [--scenes 8] [--thresholds 0.9 0.8 0.7]

Each held-out scene is inverted (edit-friendly, guidance 1); the edit recolours its first object.
Two maps, each kept above the same per-frame quantile as Guided Sample's mask:
  attention     the mask Guided Sample makes (`vidinv.editmask`: the sample's image-query attention
                to the prompt tokens that changed), sampled at guidance 5
  difference    DiffEdit's (Couairon et al., ICLR 2023): |v(x_t, edit) - v(x_t, source)| averaged
                over channels, on the trajectory's latents at 20-60 % of the steps (no sampling)
For each: the share of the frame it covers, and the share of the edited object's and of the
other object's pixels inside it (a mask that finds the object: edited high, other low).
A measurement for BENCHMARKS.md, not a node option.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidinv import editmask, families, pipeline, scenes  # noqa: E402
from vidinv.attention import ReferenceOptions, ReferenceSpec  # noqa: E402
from vidinv.family import Guidance  # noqa: E402
from vidinv.models import cogvideox  # noqa: E402


def coverage(latent_mask: torch.Tensor, model, specs) -> dict:
    """Share of the frame, of the edited object and of the other object inside a latent mask."""
    h, w = model.native_size
    px = editmask.to_pixels(latent_mask, model.spatial_factor, model.temporal_factor)[..., 0]
    px = px.numpy().reshape(len(specs), -1, h, w) > 0.5
    truth = [scenes.true_masks(s) for s in specs]
    share = lambda k: float(np.mean([(p & t[k]).sum() / t[k].sum() for p, t in zip(px, truth)]))  # noqa: E731
    return {"area": float(px.mean()), "edited": share(0), "other": share(1)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.8, 0.7])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = cogvideox.load(args.model, "fp32")
    specs = scenes.heldout_scenes(args.scenes)
    x0 = torch.cat([cogvideox.encode_video(model, torch.from_numpy(scenes.render_scene(s))) for s in specs])
    src = cogvideox.encode_text(model, [s.caption for s in specs])
    edit = cogvideox.encode_text(model, [s.recoloured(0, scenes.edit_target(s)).caption for s in specs])
    traj = pipeline.invert_friendly(model, src, x0, args.steps, Guidance(1.0), seed=0)
    fam = families.of(model)
    grid = fam.grid(model, args.steps)
    d_src, d_edit = (fam.denoiser(model, c, Guidance(1.0), grid, None) for c in (src, edit))
    with torch.no_grad():
        levels = range(round(0.2 * args.steps), round(0.6 * args.steps) + 1, max(1, args.steps // 10))
        diff = sum((d_edit(traj.latent_for_step(i), i) - d_src(traj.latent_for_step(i), i)).abs().mean(2)
                   for i in levels)
    patched = dataclasses.replace(model, reference=ReferenceSpec(traj, ReferenceOptions(weight=0.0)))
    rows = []
    for t in args.thresholds:
        mask = editmask.EditMask(t)
        pipeline.guided_sample(patched, edit, Guidance(5.0), edit_mask=mask)
        diff_mask = editmask.mask_from_map(diff.flatten(1), tuple(diff.shape[1:]), (1, 1, 1), x0.shape, t)
        for name, m in (("attention", mask.latent), ("difference", diff_mask)):
            rows.append({"threshold": t, "map": name, **coverage(m, model, specs)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nCommand: `python tools/mask_localisation.py {' '.join(argv or sys.argv[1:])}`  \n"
          f"Model: {model.describe()}; {len(specs)} held-out scenes, {args.steps} steps.\n")
    print("| quantile | map | frame covered | edited object covered | other object covered |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['threshold']:g} | {r['map']} | {r['area']:.2f} | {r['edited']:.2f} | {r['other']:.2f} |")


if __name__ == "__main__":
    main()
