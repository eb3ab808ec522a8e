"""Edit benchmark on the bundled model: change the colour or the shape in the prompt, and
measure the target attribute and how much structure (mask, motion) is kept. One run, one table.

    python tools/bench_edit.py [--videos 8] [--speed-only] [--methods NAME ...] [--json results.json]

Each held-out video is inverted with its caption; every method then samples the edited caption
(colour edits: the next colour; shape edits: the next shape). Metrics on the decoded edit,
against the source's VAE reconstruction: target attribute hit, direction kept, per-frame
foreground-mask IoU, centroid path error (px). Methods:
  naive            DDIMInverseScheduler inversion, then plain sampling of the edit
  published        fresh noise, reference K/V in every block and step from the naive trajectory,
                   reference computed with the edit prompt (per CFG row)
  ground truth     the edited video drawn by the generator, through the VAE: the metrics' ceiling
  sdedit s         the source noised to strength s, then plain sampling of the edit
  exact            exact inversion, plain sampling of the edit (no injection)
  exact from f     the exact trajectory's latent at fraction f of the steps, plain sampling of the
                   edit over the rest (SDEdit without fresh noise: how late the edit still redraws)
  ours ...         exact inversion + reference attention (defaults and a sweep)
  node defaults    Reference Attention + Guided Sample at their node defaults on this model (the family's
                   measured chain, `EditRecipe`: CogVideoX text-to-video weight 8 in the first 40 % of the
                   steps, guided by the one-call inversion of the exact trajectory's clean latent, the
                   difference mask, fresh noise inside it)
  ..., one-call trajectory
                   the same chain guided by the one-call trajectory (DDIM Invert with iterations 0, the
                   naive inverse on the model's own schedule) instead of the exact one (--fresh-in-mask rows)
  ... + NPI        negative-prompt inversion: the source prompt as the negative of the edit
  ... + null-text  null-text inversion (10 iterations per step, optimised for this guidance;
                   its optimisation time is counted in the row's seconds)
  ... + PTI eta e  prompt-tuning inversion (10 iterations per step, optimised for this guidance;
                   its time counted likewise), the edit prompt's embedding interpolated as
                   (1 - e) tuned + e edit
  edit-friendly    edit-friendly DDPM inversion (guidance 1, seed 0), the edit sampled with its noise
                   maps (`vidinv.friendly`); "from f": starting at fraction f of the steps (the
                   paper's T_skip); "+ ours": with reference attention at the defaults
  ... + mask t     the edit mask (`vidinv.editmask`, quantile t of each frame: LEDITS++'s default 0.9
                   unless --mask-threshold says otherwise) from the attention; "diff mask t": from
                   the prediction difference (--mask-source); "... otsu": cut at Otsu's level
                   (--mask-cut); "true mask" (--true-mask): the shape's true pixels given as a
                   MASK (a mask exactly right: what is lost with it is lost inside it); outside
                   it each step follows the trajectory
`--methods` runs only the named rows (then without the speed runs and the reconstruction rows
not named).
Also: plain vs guided sampling time with CFG on, and the peak memory of both.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.benchkit import (NODE_DEFAULTS, add_mask_arguments, add_reference_arguments, add_video_arguments,  # noqa: E402
                            difference_masks, edit_markdown, edit_mask, edit_rows, edited_spec, encode_heldout, machine,
                            mask_options, naive_trajectory, node_defaults, reconstruction_rows, reference_rows, report,
                            score_frames, sdedit, time_samplers, video_size)
from vidinv.family import Guidance  # noqa: E402
from vidinv.solver import Solver  # noqa: E402
from vidinv import nulltext, pipeline, synthetic  # noqa: E402
from vidinv.attention import ReferenceOptions, ReferenceSpec  # noqa: E402
from vidinv.models import cogvideox  # noqa: E402


def score(model, z, specs, targets, kind, recon):
    h, w = specs[0].height, specs[0].width
    return score_frames(cogvideox.decode_video(model, z).numpy().reshape(len(specs), -1, h, w, 3), specs, targets,
                        kind, recon)


OURS_SWEEP = {
    "ours default (w=4, no text)": ReferenceOptions(),
    "ours w=1 + text (plain concat)": ReferenceOptions(weight=1.0, text=True),
    "ours w=4 + text": ReferenceOptions(text=True),
    "ours w=1": ReferenceOptions(weight=1.0),
    "ours w=2": ReferenceOptions(weight=2.0),
    "ours w=8": ReferenceOptions(weight=8.0),
    "ours start=0.3": ReferenceOptions(start=0.3),
    "ours end=0.5": ReferenceOptions(end=0.5),
    "ours end=0.8": ReferenceOptions(end=0.8),
    "ours blocks 0-3": ReferenceOptions(blocks="0-3"),
    "ours blocks 4-": ReferenceOptions(blocks="4-"),
    "ours cond-rows": ReferenceOptions(rows="conditional"),
    "ours edit-reference": ReferenceOptions(reference_text="edit"),
}


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    model = cogvideox.load(args.model, "fp32")
    specs, x0 = encode_heldout(model, args.videos, video_size(args))
    h, w = specs[0].height, specs[0].width
    recon = cogvideox.decode_video(model, x0).numpy().reshape(len(specs), -1, h, w, 3)
    src = cogvideox.encode_text(model, [s.caption for s in specs])
    steps = args.steps
    exact = pipeline.invert(model, src, x0, steps, Guidance(1.0), Solver(iters=10, tol=1e-5))
    ef = pipeline.invert_friendly(model, src, x0, steps, Guidance(1.0), seed=0)
    naive = naive_trajectory(model, src, x0, steps)
    # the one-call trajectory (DDIM Invert with iterations 0), made once if one of its rows runs
    one_call = ((", one-call trajectory",
                 functools.cache(lambda: pipeline.invert(model, src, x0, steps, Guidance(1.0), Solver(iters=0)))),)
    truth = torch.from_numpy(np.concatenate([synthetic.foreground_mask(synthetic.render(s)) for s in specs])).float() \
        if args.true_mask else None
    results = {"model": model.describe(), "machine": machine(), "videos": len(specs), "steps": steps, "tables": []}

    def guided(traj, opts, cond, g, start="inverted", negative=None, positive=None, mask=None, start_at=0.0):
        patched = dataclasses.replace(model, reference=ReferenceSpec(traj, opts))
        return pipeline.guided_sample(patched, cond, Guidance(g), start=start, negative=negative, positive=positive,
                                      edit_mask=edit_mask(mask, truth), start_at=start_at)

    def wanted(name):
        return not args.methods or name in args.methods

    def fresh_in_mask_rows(cond, g, trajectories) -> dict:
        """The --fresh-in-mask rows: each --weights row with each difference mask, started from fresh noise inside
        the mask, guided by each of `trajectories` ((name suffix, trajectory maker), ...)."""
        if not args.fresh_in_mask:
            return {}
        return {f"{name} + {m} + fresh in mask{suffix}": (
            lambda traj=traj, o=o, mo=mo: guided(traj(), o, cond, g, "fresh in mask", mask=mo))
            for suffix, traj in trajectories for name, o in reference_rows(args.weights)
            for m, mo in difference_masks(args)}

    optimised = {}  # (inversion, guidance) -> (trajectory with its embeddings, seconds of optimisation)

    def optimise(invert, g, rows):
        """Null-text or prompt-tuning inversion at guidance g, once, if one of `rows` is run."""
        if not any(wanted(name) for name in rows):
            return exact, 0.0
        if (invert, g) not in optimised:
            start = time.time()
            optimised[invert, g] = (invert(model, exact, g, iters=10), time.time() - start)
        return optimised[invert, g]

    def pti_sample(pt, base, edit, g, eta):
        positive = nulltext.positive_for(pt, edit, eta)
        if base == "exact":
            return pipeline.sample(model, edit, pt.noise, steps, guidance=Guidance(g), positive=positive)
        return guided(pt, ReferenceOptions(), edit, g, positive=positive)

    # reconstruction with the source prompt
    recon_rows = {"exact plain": lambda: pipeline.sample(model, src, exact.noise, steps),
                  "ours default": lambda: guided(exact, ReferenceOptions(), src, 1.0),
                  "edit-friendly": lambda: pipeline.sample(model, src, ef.noise, steps, noise_maps=ef.noise_maps),
                  "edit-friendly + ours": lambda: guided(ef, ReferenceOptions(), src, 1.0),
                  "published": lambda: guided(naive, ReferenceOptions(reference_text="edit"), src, 1.0, "fresh"),
                  NODE_DEFAULTS: lambda: node_defaults(model, exact, src, 1.0),
                  **fresh_in_mask_rows(src, 1.0, one_call)}
    results["reconstruction"] = reconstruction_rows(
        {name: fn() for name, fn in recon_rows.items() if wanted(name)}, x0, recon,
        lambda z: cogvideox.decode_video(model, z).numpy().reshape(recon.shape))

    for kind in args.edits:
        targets = [edited_spec(s, kind) for s in specs]
        edit = cogvideox.encode_text(model, [t.caption for t in targets])
        for g in args.guidance:
            npi = nulltext.negative_for("source prompt", exact)
            # optimised once per guidance, outside the timed rows
            nt, nt_seconds = optimise(nulltext.null_text_inversion, g, ("exact + null-text", "ours + null-text"))
            null = nulltext.negative_for("null-text", nt) if nt.null_embeds is not None else None
            pti_rows = {f"{base} + PTI eta {e:g}": (base, e) for e in args.etas for base in ("exact", "ours default")}
            pt, pt_seconds = optimise(nulltext.prompt_tuning_inversion, g, pti_rows)
            methods = {
                "ground truth (VAE)": lambda: torch.cat([cogvideox.encode_video(model, torch.from_numpy(
                    synthetic.render(t))) for t in targets]),
                "naive": lambda: pipeline.sample(model, edit, naive.noise, steps, Guidance(g)),
                "published": lambda: guided(naive, ReferenceOptions(reference_text="edit"), edit, g, "fresh"),
                **{f"sdedit {s}": (lambda s=s: sdedit(model, edit, x0, steps, g, s)) for s in args.sdedit},
                "exact": lambda: pipeline.sample(model, edit, exact.noise, steps, Guidance(g)),
                **{f"exact from {f:g}": (lambda k=round(f * steps): pipeline.sample(
                    model, edit, exact.latent_for_step(k), steps, Guidance(g), start=k)) for f in args.late},
                **{name: (lambda o=o: guided(exact, o, edit, g))
                   for name, o in {**OURS_SWEEP, **dict(reference_rows(args.weights))}.items()},
                "exact + NPI": lambda: pipeline.sample(model, edit, exact.noise, steps, Guidance(g), negative=npi),
                "ours + NPI": lambda: guided(exact, ReferenceOptions(), edit, g, negative=npi),
                "exact + null-text": lambda: pipeline.sample(model, edit, exact.noise, steps, Guidance(g),
                                                             negative=null),
                "ours + null-text": lambda: guided(nt, ReferenceOptions(), edit, g, negative=null),
                **{name: (lambda base=base, e=e: pti_sample(pt, base, edit, g, e)) for name, (base, e) in pti_rows.items()},
                "edit-friendly": lambda: pipeline.sample(model, edit, ef.noise, steps, Guidance(g),
                                                         noise_maps=ef.noise_maps),
                **{f"edit-friendly from {f:g}": (lambda k=round(f * steps): pipeline.sample(
                    model, edit, ef.latent_for_step(k), steps, Guidance(g), start=k, noise_maps=ef.noise_maps))
                   for f in args.skip},
                "edit-friendly + ours": lambda: guided(ef, ReferenceOptions(), edit, g),
                **{f"{name} from {f:g}{' + ' + m if mo else ''}": (
                    lambda traj=traj, f=f, mo=mo: guided(traj, ReferenceOptions(), edit, g, mask=mo,
                                                         start_at=f))
                   for f in args.skip for name, traj in (("ours default", exact), ("edit-friendly + ours", ef))
                   for m, mo in [("", None)] + difference_masks(args)},
                **{f"{name} + {m}": (lambda traj=traj, o=o, st=st, mo=mo: guided(traj, o, edit, g, st, mask=mo))
                   for m, mo in mask_options(args.mask_threshold, args.mask_source, args.mask_cut, args.true_mask,
                                             args.mask_grow, args.mask_level)
                   for name, traj, o, st in (
                       ("naive", naive, ReferenceOptions(weight=0.0), "inverted"),
                       ("published", naive, ReferenceOptions(reference_text="edit"), "fresh"),
                       ("exact", exact, ReferenceOptions(weight=0.0), "inverted"),
                       ("ours default", exact, ReferenceOptions(), "inverted"),
                       ("ours w=1", exact, ReferenceOptions(weight=1.0), "inverted"),
                       ("ours w=2", exact, ReferenceOptions(weight=2.0), "inverted"),
                       *((name, exact, o, "inverted") for name, o in reference_rows(args.weights)
                         if name not in ("ours w=1", "ours w=2")),
                       ("edit-friendly", ef, ReferenceOptions(weight=0.0), "inverted"),
                       ("edit-friendly + ours", ef, ReferenceOptions(), "inverted"))},
                **fresh_in_mask_rows(edit, g, (("", lambda: exact), *one_call)),
                NODE_DEFAULTS: lambda: node_defaults(model, exact, edit, g),
            }
            methods = {name: fn for name, fn in methods.items() if wanted(name)}
            rows = edit_rows(methods, lambda z: score(model, z, specs, targets, kind, recon),
                             {"edit": kind, "guidance": g},
                             {**{name: nt_seconds for name in methods if name.endswith("null-text")},
                              **{name: pt_seconds for name in methods if name in pti_rows}})
            results["tables"].append({"edit": kind, "guidance": g, "rows": rows})

    if args.methods:
        return results
    # speed and memory: plain vs guided with CFG on, injection everywhere
    edit = cogvideox.encode_text(model, [edited_spec(s, "colour").caption for s in specs])
    timing = time_samplers({
        "plain": lambda: pipeline.sample(model, edit, exact.noise, steps, Guidance(args.speed_guidance)),
        "guided": lambda: guided(exact, ReferenceOptions(), edit, args.speed_guidance),
        "guided start=0.3": lambda: guided(exact, ReferenceOptions(start=0.3), edit, args.speed_guidance),
        "guided end=0.5": lambda: guided(exact, ReferenceOptions(end=0.5), edit, args.speed_guidance),
        "edit-friendly": lambda: pipeline.sample(model, edit, ef.noise, steps, Guidance(args.speed_guidance),
                                                 noise_maps=ef.noise_maps),
        "published": lambda: guided(naive, ReferenceOptions(reference_text="edit"), edit, args.speed_guidance,
                                    "fresh")}, args.repeats)
    results["speed"] = {"guidance": args.speed_guidance, "repeats": args.repeats, "samplers": timing}
    return results


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "assets" / "tiny-cogvideox"))
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, nargs="+", default=[3.0, 5.0])
    p.add_argument("--edits", nargs="+", choices=["colour", "shape"], default=["colour", "shape"])
    p.add_argument("--sdedit", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    p.add_argument("--late", type=float, nargs="+", default=[0.4, 0.8, 0.9],
                   help="fractions of the steps where the 'exact from' rows start")
    p.add_argument("--skip", type=float, nargs="+", default=[0.2],
                   help="fractions of the steps where the 'edit-friendly from' rows start")
    add_mask_arguments(p, true_mask=True)
    add_video_arguments(p)
    add_reference_arguments(p)
    p.add_argument("--speed-guidance", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--speed-only", action="store_true", help="skip the edit tables (reconstruction and speed only)")
    p.add_argument("--etas", type=float, nargs="+", default=[0.4, 0.6, 0.8, 0.9, 1.0],
                   help="tuned_eta values of the prompt-tuning rows")
    p.add_argument("--methods", nargs="*", default=[], help="only these rows (e.g. 'exact + PTI eta 0.6'); all "
                   "when empty")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.speed_only:
        args.guidance = []
    report(run(args), edit_markdown, "bench_edit.py", argv, args.json)


if __name__ == "__main__":
    main()
