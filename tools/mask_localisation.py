"""Does an edit mask find the object the edit names? Measured where the pixels of each object are
known: the two-object scenes (`vidinv.scenes.true_masks`) or the single shapes of the old benchmark
(their foreground, `vidinv.synthetic.foreground_mask`).

    python tools/mask_localisation.py --model FOLDER [--ground scenes|shapes] [--videos 8]
        [--thresholds 0.9 0.8 0.7] [--windows 0.6-1.0 0.2-0.6] [--no-attention]

Each held-out video is inverted (edit-friendly, guidance 1); the edit recolours its (first) object.
Two maps, each cut per frame as Guided Sample cuts it (`vidinv.editmask.mask_from_map`): at each
quantile of --thresholds, and at Otsu's level:
  attention     the mask Guided Sample makes from the sample's image-query attention to the prompt
                tokens that changed, sampled at guidance 5 (one sample per cut)
  difference    DiffEdit's map (Couairon et al., ICLR 2023), |v(x_t, edit) - v(x_t, source)|
                averaged over channels, on the trajectory's latents at up to 5 steps of each
                fraction window of --windows (0.6-1.0: the window Guided Sample uses)
For each: the share of the frame it covers, and the share of the edited object's and of the other
object's pixels inside it (a mask that finds the object: edited high, other low); shapes have no
other object. A measurement for BENCHMARKS.md.
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

from tools.benchkit import edited_spec  # noqa: E402
from vidinv import editmask, families, pipeline, scenes, synthetic  # noqa: E402
from vidinv.attention import ReferenceOptions  # noqa: E402
from vidinv.family import Guidance  # noqa: E402
from vidinv.models import cogvideox  # noqa: E402


def ground(name: str, count: int):
    """(frames per video, source captions, edited captions, per video the object masks [edited, other?])."""
    if name == "scenes":
        specs = scenes.heldout_scenes(count)
        frames = [scenes.render_scene(s) for s in specs]
        edits = [s.recoloured(0, scenes.edit_target(s)).caption for s in specs]
        return frames, [s.caption for s in specs], edits, [list(scenes.true_masks(s)) for s in specs]
    specs = synthetic.heldout_specs(count)
    frames = [synthetic.render(s) for s in specs]
    edits = [edited_spec(s, "colour").caption for s in specs]
    return frames, [s.caption for s in specs], edits, [[synthetic.foreground_mask(f)] for f in frames]


def coverage(latent_mask: torch.Tensor, model, truth) -> dict:
    """Share of the frame, of the edited object and (if any) of the other object inside a latent mask."""
    px = editmask.to_pixels(latent_mask, model.spatial_factor, model.temporal_factor)[..., 0].numpy()
    px = px.reshape(len(truth), -1, *px.shape[1:]) > 0.5
    share = lambda k: float(np.mean([(p & t[k]).sum() / t[k].sum() for p, t in zip(px, truth)]))  # noqa: E731
    return {"area": float(px.mean()), "edited": share(0), "other": share(1) if len(truth[0]) > 1 else None}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--ground", choices=["scenes", "shapes"], default="scenes")
    p.add_argument("--videos", "--scenes", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.8, 0.7])
    p.add_argument("--windows", nargs="+", default=["0.6-1.0"], help="fraction windows of the difference map")
    p.add_argument("--no-attention", action="store_true", help="skip the attention map (it needs sampling)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = cogvideox.load(args.model, "fp32")
    frames, captions, edits, truth = ground(args.ground, args.videos)
    x0 = torch.cat([cogvideox.encode_video(model, torch.from_numpy(f)) for f in frames])
    src, edit = cogvideox.encode_text(model, captions), cogvideox.encode_text(model, edits)
    traj = pipeline.invert_friendly(model, src, x0, args.steps, Guidance(1.0), seed=0)
    fam = families.of(model)
    grid = fam.grid(model, args.steps)
    d_src, d_edit = (fam.denoiser(model, c, Guidance(1.0), grid, None) for c in (src, edit))
    everyone = torch.ones(x0.shape[0], dtype=torch.bool)
    cuts = [("quantile", t) for t in args.thresholds] + [("otsu", 0.0)]
    maps = {}
    with torch.no_grad():
        for w in args.windows:
            window = tuple(float(v) for v in w.split("-"))
            maps[f"difference {w}"] = editmask.difference_map(d_src, d_edit, traj.latent_for_step, args.steps,
                                                              everyone, window)
    patched = pipeline.with_reference(model, traj, ReferenceOptions(weight=0.0))
    rows = []
    for cut, t in cuts:
        label = "otsu" if cut == "otsu" else f"{t:g}"
        masks = {name: editmask.mask_from_map(m.flatten(1), tuple(m.shape[1:]), (1, 1, 1), x0.shape, t, cut)
                 for name, m in maps.items()}
        if not args.no_attention:
            mask = editmask.EditMask(t, cut=cut)
            pipeline.guided_sample(patched, edit, Guidance(5.0), edit_mask=mask)
            masks = {"attention": mask.latent, **masks}
        for name, m in masks.items():
            rows.append({"cut": label, "map": name, **coverage(m, model, truth)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nCommand: `python tools/mask_localisation.py {' '.join(argv or sys.argv[1:])}`  \n"
          f"Model: {model.describe()}; {len(frames)} held-out {args.ground}, {args.steps} steps.\n")
    print("| cut | map | frame covered | edited object covered | other object covered |\n|---|---|---|---|---|")
    for r in rows:
        other = "—" if r["other"] is None else f"{r['other']:.2f}"
        print(f"| {r['cut']} | {r['map']} | {r['area']:.2f} | {r['edited']:.2f} | {other} |")


if __name__ == "__main__":
    main()
