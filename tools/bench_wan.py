"""Wan benchmark on the bundled tiny Wan: round trips, guided reconstruction, colour edits and the
cost of guided sampling, on the held-out videos of the CogVideoX benchmarks (BENCHMARKS.md).

    python tools/bench_wan.py [--videos 8] [--steps 50] [--json results.json]

Round trip: each video inverted with its caption (flow Euler, exact: 10 refinements per step on
average, tolerance 1e-5; naive: the inverse Euler step without refinement) at guidance 1 and 5,
sampled back with the same guidance. Edits (colour -> the next colour, guidance 5), scored against
the source's VAE reconstruction as tools/bench_edit.py does:
  ground truth (VAE)  the edited video drawn by the generator, through the VAE: the ceiling
  naive               the naive trajectory's noise, plain sampling of the edit
  published           fresh noise, reference K/V from the naive trajectory in every block and step,
                      the reference made with the edit prompt per CFG row (the published recipe)
  sdedit s            the source noised to sigma at fraction s of the steps, plain sampling
  exact               exact inversion, plain sampling of the edit
  exact + NPI         ... with the source prompt as the negative (negative-prompt inversion)
  ours default        exact inversion + reference attention at the library's defaults (ReferenceOptions)
  node defaults       Reference Attention + Guided Sample at their node defaults on this model (the
                      family's measured chain, `EditRecipe`; Wan text-to-video: reference weight 4,
                      the difference mask cut at 0.6 x Otsu's level, fresh noise inside it)
  ours + NPI          both
  edit-friendly       edit-friendly DDPM inversion (guidance 1, seed 0), the edit sampled with its noise
                      maps (the flow posterior, `vidinv.friendly`); "from 0.2": from a fifth of the
                      steps on; "+ ours": with reference attention at the defaults
  ... + mask t        exact, ours default and edit-friendly with the edit mask (`vidinv.editmask`,
                      quantile t of each frame, --mask-threshold; "mask t" from the cross-attention,
                      "diff mask t" from the prediction difference, --mask-source; "... otsu":
                      cut at Otsu's level, --mask-cut)
  fireflow            FireFlow-style one-call inversion (Deng et al., ICML 2025): the midpoint solver
                      whose midpoint velocity is reused as the next step's start, so one model call
                      per step (plus one), both ways; inverted with the source prompt at guidance 1,
                      the edit sampled by the same solver at guidance 5 (no feature injection)
  rf-inversion        RF-Inversion (Rout et al., ICLR 2025, Algorithms 1 and 2): the controlled forward
                      ODE (the empty prompt's velocity pulled towards a fixed noise draw with gamma 0.5)
                      inverts at one call per step; the controlled reverse ODE samples the edit at
                      guidance 5, its velocity pulled towards the source's straight path (eta 0.9) over
                      the first quarter of the steps (the paper's settings, not tuned here)
  flowedit N/M g/h    FlowEdit (`vidinv.flowedit`, Kulikov et al. 2025): no inversion, the paper's steps
                      n_max = N down to n_min + 1 (M = n_min, then plain target steps), source guidance
                      g, target guidance h, n_avg 1, seed 0 (--flowedit N/M/g/h ...); the first
                      one also with the difference masks ("+ diff mask ...": DiffEdit's map on the
                      source noised to the cleanest 40 % of the levels, `pipeline.flow_edit`)
Every edit row counts the network rows it ran per video per step ("rows/step": one CFG pair = 2, as
the paper counts FlowEdit's 4 per step); rows spent on the trajectory it starts from are listed
beside the table (they are paid once per video, whatever the number of edits).
Speed: plain vs guided sampling at guidance 5 (CFG on), median of --repeats.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.benchkit import (NODE_DEFAULTS, CountingHooks, RowCounter, add_mask_arguments,  # noqa: E402
                            add_reference_arguments, add_video_arguments, counted_edit_rows, counted_table,
                            difference_masks, edit_markdown, edit_mask, edited_spec, flowedit_specs,
                            encode_heldout, inversion_markdown, machine, mask_options, node_defaults,
                            reconstruction_rows, reference_rows, rel_err, report, score_frames, sdedit,
                            time_samplers, video_size)
from vidinv import nulltext, pipeline, synthetic  # noqa: E402
from vidinv.attention import ReferenceOptions  # noqa: E402
from vidinv.family import Guidance  # noqa: E402
from vidinv.models import wan  # noqa: E402
from vidinv.solver import Solver  # noqa: E402


def midpoint_grid(model, steps):
    """The model's flow grid with the midpoint of every step between its points: a denoiser over it
    gives the velocity at sigma_k (index 2k; 2 steps: sigma 0) and at the midpoint of step k (2k + 1)."""
    from vidinv import flow
    sigmas, _ = flow.sigmas_from_config(model.scheduler_config, steps)
    both = [v for a, b in zip(sigmas, sigmas[1:]) for v in (a, (a + b) / 2)] + [0.0]
    n = int(model.scheduler_config.get("num_train_timesteps", 1000))
    return sigmas, flow.steps_grid(both, [n * v for v in both])  # a model time for sigma 0 too


def fireflow(model, cond, x, steps, guidance, invert: bool) -> torch.Tensor:
    """FireFlow's solver (Deng et al., ICML 2025, Algorithm 1) on the model's sigma grid: a midpoint
    step ``x' = x + h v(x + h/2 v_prev, t + h/2)`` whose midpoint velocity becomes the next step's
    v_prev (the first step's v_prev is one extra call): sigma rising with `invert`, falling to sample."""
    sigmas, grid = midpoint_grid(model, steps)
    v = wan.FAMILY.denoiser(model, cond, Guidance(guidance), grid)
    order = range(steps - 1, -1, -1) if invert else range(steps)
    x = x.float()
    v_prev = None
    for k in order:
        a, b = (sigmas[k + 1], sigmas[k]) if invert else (sigmas[k], sigmas[k + 1])
        if v_prev is None:  # the velocity at the first point: one extra call
            v_prev = v(x, 2 * (k + 1) if invert else 2 * k)
        h = b - a
        v_prev = v(x + h / 2 * v_prev, 2 * k + 1)
        x = x + h * v_prev
    return x


def rf_invert(model, x0, steps, gamma=0.5, seed=0) -> torch.Tensor:
    """RF-Inversion's controlled forward ODE (Algorithm 1) on the model's sigma grid, rising from the
    clean latent: ``Y += h (u + gamma ((y1 - Y) / (1 - sigma) - u))`` with u the empty prompt's velocity
    at the step's lower sigma and y1 one fixed noise draw."""
    sigmas, grid = midpoint_grid(model, steps)
    u = wan.FAMILY.denoiser(model, wan.encode_text(model, ""), Guidance(1.0), grid)
    y1 = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    y = x0.float()
    for k in range(steps - 1, -1, -1):
        a, b = sigmas[k + 1], sigmas[k]
        v = u(y, 2 * (k + 1))
        y = y + (b - a) * (v + gamma * ((y1 - y) / (1.0 - a) - v))
    return y


def rf_edit(model, cond, noise, x0, steps, guidance, eta=0.9, stop=0.25) -> torch.Tensor:
    """RF-Inversion's controlled reverse ODE (Algorithm 2): Euler sampling of `cond` whose velocity
    over the first `stop` of the steps is pulled by `eta` towards the straight path to the source
    ``(x - x0) / sigma``."""
    sigmas, grid = midpoint_grid(model, steps)
    v = wan.FAMILY.denoiser(model, cond, Guidance(guidance), grid)
    x, x0 = noise.float(), x0.float()
    for k in range(steps):
        a, b = sigmas[k], sigmas[k + 1]
        vel = v(x, 2 * k)
        if k < round(stop * steps):
            vel = vel + eta * ((x - x0) / a - vel)
        x = x + (b - a) * vel
    return x


def run(args) -> dict:
    needs = [k for k in args.methods or [] if any(w in k for w in ("edit-friendly", "fireflow", "rf-inversion"))]
    if args.edits_only and (not args.methods or needs):
        raise SystemExit(f"--edits-only runs named rows that start from the exact or naive inversion; "
                         f"{'no --methods' if not args.methods else 'not ' + ', '.join(needs)}")
    torch.set_num_threads(args.threads)
    model = wan.load(args.model, "fp32")
    specs, x0 = encode_heldout(model, args.videos, video_size(args))

    def decode(z):  # [B, F, C, h, w] -> frames [B, N, H, W, 3]
        frames = wan.decode_video(model, z).numpy()
        return frames.reshape(len(z), -1, *frames.shape[1:])

    recon = decode(x0)
    src = wan.encode_text(model, [s.caption for s in specs])
    steps = args.steps
    result = {"model": model.describe(), "machine": machine(), "videos": len(specs), "steps": steps, "tables": [],
              "reconstruction": {}}

    fresh = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    trajectories = {}
    for g in (1.0, args.guidance) if args.cfg_round_trip else (1.0,):
        rows = []
        for name, settings in (("default", Solver(iters=10, tol=1e-5)), ("naive (inverse Euler step)", Solver(0, 0.0))):
            calls = [0]
            start = time.time()
            traj = pipeline.invert(model, src, x0, steps, Guidance(g), settings, hooks=CountingHooks(calls))
            trajectories[g, name] = traj
            if args.edits_only:
                continue
            back = pipeline.sample(model, src, traj.noise, steps, Guidance(g))
            errs = rel_err(back, x0)
            frames = decode(back)
            rows.append({"method": name, "rel_err": float(np.mean(errs)), "rel_err_max": float(np.max(errs)),
                         "psnr_db": float(np.mean([synthetic.psnr(a, b) for a, b in zip(frames, recon)])),
                         "calls_per_step": calls[0] / steps, "step_calls": list(traj.calls),
                         "seconds": time.time() - start})
            print(rows[-1], flush=True)
        if args.edits_only:
            continue
        baseline = float(np.mean(rel_err(pipeline.sample(model, src, fresh, steps, Guidance(g)), x0)))
        result["tables"].append({"steps": steps, "guidance": g, "fresh_noise_rel_err": baseline, "rows": rows})
    exact, naive = trajectories[1.0, "default"], trajectories[1.0, "naive (inverse Euler step)"]
    inversion_rows = {}
    ef = fire_noise = rf_noise = None  # --edits-only: not made (rows that need them are not run)
    if not args.edits_only:
        with RowCounter(model.experts) as counter:
            ef = pipeline.invert_friendly(model, src, x0, steps, Guidance(1.0), seed=0)
        inversion_rows["edit-friendly"] = counter.rows / len(specs) / steps
    for label, key in (("exact", "default"), ("naive", "naive (inverse Euler step)")):
        inversion_rows[label] = float(np.mean(trajectories[1.0, key].calls))  # guidance 1: one row per call
    skip = round(0.2 * steps)

    def guided(traj, opts, cond, g, start="inverted", negative=None, mask=None, start_at=0.0, share=0.0):
        return pipeline.guided_sample(pipeline.with_reference(model, traj, opts), cond, Guidance(g), start=start,
                                      negative=negative, edit_mask=edit_mask(mask), start_at=start_at,
                                      inverted_share=share)

    published = ReferenceOptions(reference_text="edit")
    if not args.edits_only:  # the one-call baselines and the reconstruction rows
        with RowCounter(model.experts) as counter:
            fire_noise = fireflow(model, src, x0, steps, 1.0, invert=True)
        inversion_rows["fireflow"] = counter.rows / len(specs) / steps
        with RowCounter(model.experts) as counter:
            rf_noise = rf_invert(model, x0, steps)
        inversion_rows["rf-inversion"] = counter.rows / len(specs) / steps
        result["reconstruction"] = reconstruction_rows({
            "fireflow (its own sampler)": fireflow(model, src, fire_noise, steps, 1.0, invert=False),
            "rf-inversion (its controlled reverse ODE)": rf_edit(model, src, rf_noise, x0, steps, 1.0),
            **{f"flowedit {n_max}/0 {g_src:g}/{g_src:g} (source prompt both sides)": pipeline.flow_edit(
                model, src, src, x0, steps, n_max, 0, 1, Guidance(g_src), Guidance(g_src), 0)
               for n_max, _, g_src, _ in flowedit_specs(args.flowedit)[:1]},  # exact by construction: the first spec
            "exact plain": pipeline.sample(model, src, exact.noise, steps),
            "ours default": guided(exact, ReferenceOptions(), src, 1.0),
            **({f"ours default, guidance {args.guidance:g} trajectory": guided(
                trajectories[args.guidance, "default"], ReferenceOptions(), src, args.guidance)}
               if args.cfg_round_trip else {}),
            "published": guided(naive, published, src, 1.0, "fresh"),
            "edit-friendly": pipeline.sample(model, src, ef.noise, steps, noise_maps=ef.noise_maps),
            "edit-friendly + ours": guided(ef, ReferenceOptions(), src, 1.0)}, x0, recon, decode)

    g = args.guidance
    targets = [edited_spec(s, "colour") for s in specs]
    edit = wan.encode_text(model, [t.caption for t in targets])
    npi = nulltext.negative_for("source prompt", exact)
    methods = {
        "ground truth (VAE)": lambda: torch.cat([wan.encode_video(model, torch.from_numpy(synthetic.render(t)))
                                                 for t in targets]),
        "naive": lambda: pipeline.sample(model, edit, naive.noise, steps, Guidance(g)),
        "published": lambda: guided(naive, published, edit, g, "fresh"),
        **{f"sdedit {s:g}": (lambda s=s: sdedit(model, edit, x0, steps, g, s)) for s in args.sdedit},
        "exact": lambda: pipeline.sample(model, edit, exact.noise, steps, Guidance(g)),
        "exact + NPI": lambda: pipeline.sample(model, edit, exact.noise, steps, Guidance(g), negative=npi),
        "ours default": lambda: guided(exact, ReferenceOptions(), edit, g),
        NODE_DEFAULTS: lambda: node_defaults(model, exact, edit, g),
        "ours + NPI": lambda: guided(exact, ReferenceOptions(), edit, g, negative=npi),
        **{name: (lambda o=o: guided(exact, o, edit, g)) for name, o in reference_rows(args.weights)},
        "edit-friendly": lambda: pipeline.sample(model, edit, ef.noise, steps, Guidance(g), noise_maps=ef.noise_maps),
        "edit-friendly from 0.2": lambda: pipeline.sample(model, edit, ef.latent_for_step(skip), steps, Guidance(g),
                                                          start=skip, noise_maps=ef.noise_maps),
        "edit-friendly + ours": lambda: guided(ef, ReferenceOptions(), edit, g),
        "fireflow": lambda: fireflow(model, edit, fire_noise, steps, g, invert=False),
        **{f"{name} from {f:g}{' + ' + m if mo else ''}": (
            lambda traj=traj, f=f, mo=mo: guided(traj, ReferenceOptions(), edit, g, mask=mo, start_at=f))
           for f in args.skip for name, traj in (("ours default", exact), ("edit-friendly + ours", ef))
           for m, mo in [("", None)] + difference_masks(args)},
        "rf-inversion": lambda: rf_edit(model, edit, rf_noise, x0, steps, g),
        **{f"flowedit {n_max}/{n_min} {g_src:g}/{g_tar:g}": (
            lambda n_max=n_max, n_min=n_min, g_src=g_src, g_tar=g_tar: pipeline.flow_edit(
                model, src, edit, x0, steps, n_max, n_min, 1, Guidance(g_src), Guidance(g_tar), 0))
           for n_max, n_min, g_src, g_tar in flowedit_specs(args.flowedit)},
        **{f"flowedit {n_max}/{n_min} {g_src:g}/{g_tar:g} + {m}": (
            lambda n_max=n_max, n_min=n_min, g_src=g_src, g_tar=g_tar, mo=mo: pipeline.flow_edit(
                model, src, edit, x0, steps, n_max, n_min, 1, Guidance(g_src), Guidance(g_tar), 0,
                edit_mask=edit_mask(mo)))
           for n_max, n_min, g_src, g_tar in flowedit_specs(args.flowedit)[:1]
           for m, mo in difference_masks(args)},
        **{f"{name} + {m}": (lambda traj=traj, o=o, mo=mo: guided(traj, o, edit, g, mask=mo))
           for m, mo in mask_options(args.mask_threshold, args.mask_source, args.mask_cut,
                                     grows=args.mask_grow, levels=args.mask_level)
           for name, traj, o in (("exact", exact, ReferenceOptions(weight=0.0)),
                                 ("ours default", exact, ReferenceOptions()),
                                 *((name, exact, o) for name, o in reference_rows(args.weights)),
                                 ("edit-friendly", ef, ReferenceOptions(weight=0.0)))},
        **{f"{name} + {m} + fresh in mask" + (f" share {s:g}" if s else ""): (
            lambda o=o, mo=mo, s=s: guided(exact, o, edit, g, "fresh in mask", mask=mo, share=s))
           for name, o in reference_rows(args.weights) for m, mo in difference_masks(args) for s in args.inverted_share
           if args.fresh_in_mask},
    }
    methods = {k: v for k, v in methods.items() if not args.methods or k in args.methods}
    rows = counted_edit_rows(methods, model.experts, len(specs) * steps,
                             lambda z: score_frames(decode(z), specs, targets, "colour", recon),
                             {"edit": "colour", "guidance": g})
    result["tables_edit"] = [{"edit": "colour", "guidance": g, "rows": rows}]
    result["inversion_rows_per_step"] = inversion_rows
    if not args.speed:
        return result
    result["speed"] = {"guidance": g, "repeats": args.repeats, "samplers": time_samplers({
        "plain": lambda: pipeline.sample(model, edit, exact.noise, steps, Guidance(g)),
        "guided": lambda: guided(exact, ReferenceOptions(), edit, g),
        "published": lambda: guided(naive, published, edit, g, "fresh")}, args.repeats)}
    return result


def markdown(result: dict, command: str) -> str:
    inversion = inversion_markdown(result, command)
    edits = edit_markdown({**result, "tables": []}, command)
    out = [inversion, edits.split("\n", 3)[3]]  # reconstruction and speed, without a second header
    for tab in result["tables_edit"]:
        out += counted_table(tab)
    inv = result.get("inversion_rows_per_step", {})
    out += ["", "Rows per video per step of the trajectories the edits start from (guidance 1): " +
            ", ".join(f"{k} {v:.2f}" for k, v in inv.items()), ""]
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "assets" / "tiny-wan"))
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--sdedit", type=float, nargs="+", default=[0.5, 0.7])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    add_mask_arguments(p)
    add_video_arguments(p)
    p.add_argument("--flowedit", nargs="*", default=["35/0/1.5/5", "33/0/3.5/13.5"],
                   help="FlowEdit rows, each n_max/n_min/source guidance/target guidance")
    p.add_argument("--cfg-round-trip", action=argparse.BooleanOptionalAction, default=True,
                   help="also the round trip at --guidance (--no-cfg-round-trip: guidance 1 only)")
    p.add_argument("--edits-only", action="store_true",
                   help="only the exact and naive inversions the edit rows start from, then the --methods rows: no "
                            "round-trip table, reconstruction rows, edit-friendly, FireFlow or RF-Inversion baselines "
                            "(rows that need those are refused before any run)")
    p.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True,
                   help="time plain vs guided sampling (--no-speed skips it)")
    add_reference_arguments(p)
    p.add_argument("--inverted-share", type=float, nargs="+", default=[0.0], metavar="S",
                   help="each '... + fresh in mask' row once per share S of the inverted noise in the masked start "
                        "(pipeline.guided_sample's inverted_share; above 0 the row ends 'share S')")
    p.add_argument("--skip", type=float, nargs="*", default=[],
                   help="rows of the guided chains started at this fraction of the steps (from the trajectory latent)")
    p.add_argument("--methods", nargs="*", default=[], help="only these edit rows; all when empty")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    report(run(args), markdown, "bench_wan.py", argv, args.json)


if __name__ == "__main__":
    main()
