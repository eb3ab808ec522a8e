"""Edit benchmark on two-object scenes (vidinv.scenes): recolour one object, keep everything else.

    python tools/bench_scenes.py [--scenes 8] [--guidance 5] [--methods NAME ...] [--json out.json]

Each held-out scene (two shapes over a panning textured background) is inverted with its caption;
every method samples the caption with the first object's colour changed to one neither object has.
Measured on the decoded edit against the source's VAE reconstruction (`scenes.score_edit`):
edited object — target hit, IoU with its source silhouette, centroid path error; untouched object —
colour kept, shape kept, IoU; background PSNR outside the edited object (grown 2 px); flicker (mean
error of frame-to-frame differences, 0..255); seconds. Methods, each also "+ mask" (the edit mask
of `vidinv.editmask` from each map of --mask-source at each quantile of --mask-threshold: "mask t"
from the attention, "diff mask t" from the prediction difference; "... otsu" cut at Otsu's level,
--mask-cut; "true mask" with --true-mask: the edited object's true pixels, given as a MASK (a mask exactly
right: what is lost with it is lost inside it); outside it every step follows the trajectory):
  ground truth     the edited scene rendered and passed through the VAE: the metrics' ceiling
  naive            DDIMInverseScheduler inversion, plain sampling of the edit
  published        fresh noise, reference K/V from the naive trajectory in every block and step,
                   computed with the edit prompt per CFG row
  sdedit s         the source noised to strength s, plain sampling of the edit
  exact            exact inversion, plain sampling of the edit
  ours default     exact inversion + reference attention at the node's defaults
  ours edit-reference   the same with the reference pass made with the edit prompt per CFG row
                   (the published recipe's reference, from the inverted start)
  edit-friendly    edit-friendly DDPM inversion, the edit sampled with its noise maps
  edit-friendly + ours   the same with reference attention at the defaults
  ours w=W         exact inversion + reference attention at weight W (--weights), the rest at the defaults
Reconstruction with the source prompt is measured for every method that has an inversion, with and
without the mask (the mask is empty then: reconstruction must stay exact).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.benchkit import (add_mask_arguments, edit_mask, machine, mask_options, naive_trajectory,  # noqa: E402
                            report, sdedit)
from vidinv import pipeline, scenes, synthetic  # noqa: E402
from vidinv.attention import ReferenceOptions, ReferenceSpec  # noqa: E402
from vidinv.family import Guidance  # noqa: E402
from vidinv.models import cogvideox  # noqa: E402
from vidinv.solver import Solver  # noqa: E402

RATES = ("hit", "other_colour_kept", "other_shape_kept")


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    model = cogvideox.load(args.model, "fp32")
    specs = scenes.heldout_scenes(args.scenes)
    h, w = model.native_size
    decode = lambda z: cogvideox.decode_video(model, z).numpy().reshape(len(specs), -1, h, w, 3)  # noqa: E731
    x0 = torch.cat([cogvideox.encode_video(model, torch.from_numpy(scenes.render_scene(s))) for s in specs])
    recon = decode(x0)
    steps = args.steps
    targets = [scenes.edit_target(s) for s in specs]
    edited = [s.recoloured(0, t) for s, t in zip(specs, targets)]
    src = cogvideox.encode_text(model, [s.caption for s in specs])
    exact = pipeline.invert(model, src, x0, steps, Guidance(1.0), Solver(iters=10, tol=1e-5))
    friendly = pipeline.invert_friendly(model, src, x0, steps, Guidance(1.0), seed=0)
    naive = naive_trajectory(model, src, x0, steps)

    def guided(traj, opts, cond, g, start="inverted", mask=None):
        if opts is none and mask is None:  # plain sampling (timed as such)
            return pipeline.sample(model, cond, traj.noise, steps, Guidance(g), noise_maps=traj.noise_maps)
        patched = dataclasses.replace(model, reference=ReferenceSpec(traj, opts))
        return pipeline.guided_sample(patched, cond, Guidance(g), start=start,
                                      edit_mask=edit_mask(mask, truth))

    none = ReferenceOptions(weight=0.0)  # nothing injected: plain sampling, or guided sampling for the mask
    ours, published = ReferenceOptions(), ReferenceOptions(reference_text="edit")
    # name -> (trajectory, options, start); sdedit has no trajectory to follow outside a mask
    guided_methods = {"naive": (naive, none, "inverted"), "published": (naive, published, "fresh"),
                      "exact": (exact, none, "inverted"), "ours default": (exact, ours, "inverted"),
                      "ours edit-reference": (exact, ReferenceOptions(reference_text="edit"), "inverted"),
                      "edit-friendly": (friendly, none, "inverted"),
                      "edit-friendly + ours": (friendly, ours, "inverted"),
                      **{f"ours w={w:g}": (exact, ReferenceOptions(weight=w), "inverted") for w in args.weights}}

    masks = mask_options(args.mask_threshold, args.mask_source, args.mask_cut, args.true_mask, args.mask_grow,
                         args.mask_level)
    truth = torch.from_numpy(np.concatenate([scenes.true_masks(s)[0] for s in specs])).float() \
        if args.true_mask else None

    def methods(cond, g):
        out = {"ground truth (VAE)": lambda: torch.cat([cogvideox.encode_video(model, torch.from_numpy(
            scenes.render_scene(e))) for e in edited])}
        out.update({f"sdedit {s:g}": (lambda s=s: sdedit(model, cond, x0, steps, g, s)) for s in args.sdedit})
        for name, (traj, opts, start) in guided_methods.items():
            for label, mask in ((name, None), *((f"{name} + {m}", o) for m, o in masks)):
                out[label] = lambda traj=traj, opts=opts, start=start, mask=mask: guided(traj, opts, cond, g, start,
                                                                                         mask)
        return {k: v for k, v in out.items() if not args.methods or k in args.methods}

    results = {"model": model.describe(), "machine": machine(), "videos": len(specs), "steps": steps,
               "reconstruction": {}, "tables": []}
    for name, fn in methods(src, 1.0).items():
        if name.startswith(("ground truth", "sdedit", "published")):
            continue
        z = fn()
        frames = decode(z)
        results["reconstruction"][name] = {
            "rel_err": float(np.mean([float((a - b).norm() / b.norm()) for a, b in zip(z, x0)])),
            "psnr_db": float(np.mean([synthetic.psnr(a, b) for a, b in zip(frames, recon)]))}
        print(json.dumps({"reconstruction": name, **results["reconstruction"][name]}), flush=True)

    edit = cogvideox.encode_text(model, [e.caption for e in edited])
    for g in args.guidance:
        rows = []
        for name, fn in methods(edit, g).items():
            start = time.time()
            z = fn()
            seconds = time.time() - start
            scores = [scenes.score_edit(o, r, s, 0, tg) for o, r, s, tg in zip(decode(z), recon, specs, targets)]
            rows.append({"method": name, "seconds": seconds,
                         **{k: float(np.mean([sc[k] for sc in scores])) for k in scores[0]}})
            print(json.dumps({"guidance": g, **rows[-1]}), flush=True)
        results["tables"].append({"guidance": g, "rows": rows})
    return results


def markdown(result: dict, command: str) -> str:
    out = [f"Command: `{command}`  ", f"Machine: {result['machine']}  ",
           f"Model: {result['model']}; {result['videos']} held-out scenes, {result['steps']} steps, fp32.", ""]
    if result["reconstruction"]:
        out += ["Reconstruction with the source prompt (guidance 1):", "",
                "| method | latent rel. error | PSNR vs VAE recon (dB) |", "|---|---|---|"]
        out += [f"| {n} | {r['rel_err']:.2e} | {r['psnr_db']:.1f} |" for n, r in result["reconstruction"].items()]
        out.append("")
    for tab in result["tables"]:
        out += [f"**colour edit of one object, guidance {tab['guidance']:g}**", "",
                "| method | edited: hit | IoU | path (px) | other: colour | shape | IoU | background PSNR (dB) "
                "| flicker | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in tab["rows"]:
            out.append(f"| {r['method']} | {r['hit']:.2f} | {r['edited_iou']:.2f} | {r['edited_path_px']:.2f} | "
                       f"{r['other_colour_kept']:.2f} | {r['other_shape_kept']:.2f} | {r['other_iou']:.2f} | "
                       f"{r['background_psnr_db']:.1f} | {r['flicker']:.2f} | {r['seconds']:.1f} |")
        out.append("")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "assets" / "tiny-cogvideox"))
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, nargs="+", default=[5.0])
    p.add_argument("--sdedit", type=float, nargs="+", default=[0.5])
    add_mask_arguments(p, true_mask=True)
    p.add_argument("--weights", type=float, nargs="*", default=[], help="extra rows: ours at these weights")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", nargs="*", default=[], help="only these rows; all when empty")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    report(run(args), markdown, "bench_scenes.py", argv, args.json)


if __name__ == "__main__":
    main()
