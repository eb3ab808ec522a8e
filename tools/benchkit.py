"""The shared part of the benchmark scripts (tools/bench_*.py): held-out inputs, call counting,
error and edit scores, timing with peak memory, and the markdown tables, so that the CogVideoX and
SVD benchmarks measure and print the same way. Not a script: the benchmarks import it.
"""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vidinv import editmask, families, pipeline, synthetic
from vidinv.attention import ReferenceOptions
from vidinv.family import Guidance
from vidinv.hooks import Hooks


def encode_heldout(model, count: int, size: tuple[int, int, int] = (9, 64, 64)):
    """The first `count` held-out videos at `size` (frames, height, width), encoded by the model's family."""
    specs = synthetic.heldout_specs(count, *size)
    encode = families.of(model).encode_video
    x0 = torch.cat([encode(model, torch.from_numpy(synthetic.render(s))) for s in specs])
    return specs, x0


def stack_conditions(rows):
    """One video's image conditioning per entry (CogVideoX: latents; Wan: `wan.ImageCondition`, CLIP tokens or
    none) -> one conditioning with a row per video; None when the videos have none."""
    if rows[0] is None:
        return None
    if isinstance(rows[0], torch.Tensor):
        return torch.cat(rows)
    return type(rows[0])(torch.cat([r.latents for r in rows]),
                         None if rows[0].embeds is None else torch.cat([r.embeds for r in rows]))


def flowedit_specs(texts) -> list[tuple[int, int, float, float]]:
    """--flowedit "N/M/g/h" -> (n_max, n_min, source guidance, target guidance), refused before any work."""
    out = []
    for text in texts:
        try:
            n_max, n_min, g_src, g_tar = text.split("/")
            out.append((int(n_max), int(n_min), float(g_src), float(g_tar)))
        except ValueError:
            raise SystemExit(f"--flowedit {text!r}: give N_MAX/N_MIN/SOURCE_GUIDANCE/TARGET_GUIDANCE, e.g. "
                             "33/0/3.5/13.5") from None
    return out


class CountingHooks(Hooks):
    def __init__(self, counter):
        self.counter = counter

    def before_call(self):
        self.counter[0] += 1


def rel_err(a, b):
    return [float((x - y).norm() / y.norm()) for x, y in zip(a, b)]


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def report(result: dict, markdown, script: str, argv, json_path: str | None) -> None:
    """Print a benchmark's markdown, headed by the command line that ran it, and write the raw
    results to `json_path` when given."""
    args = argv if argv is not None else sys.argv[1:]
    print(markdown(result, f"python tools/{script} {' '.join(args)}".strip()))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1))


def inversion_markdown(result: dict, command: str) -> str:
    """The round-trip tables of tools/bench_inversion.py and tools/bench_svd_inversion.py."""
    out = [f"Command: `{command}`  ", f"Machine: {result['machine']}  ",
           f"Model: {result['model']}; {result['videos']} held-out videos, fp32.", ""]
    for tab in result["tables"]:
        guidance = f"{tab['guidance']:g}"
        if "min_guidance" in tab:  # SVD's frame-wise guidance
            guidance = f"{tab['min_guidance']:g} -> {guidance}"
        out += [f"**{tab['steps']} steps, guidance {guidance}** (fresh-noise baseline: relative error "
                f"{tab['fresh_noise_rel_err']:.3f})", "",
                "| method | latent rel. error (mean / max) | decoded PSNR vs VAE recon (dB) | model calls / step | seconds |",
                "|---|---|---|---|---|"]
        for r in tab["rows"]:
            out.append(f"| {r['method']} | {r['rel_err']:.2e} / {r['rel_err_max']:.2e} | {r['psnr_db']:.1f} | "
                       f"{r['calls_per_step']:.2f} | {r['seconds']:.1f} |")
        default = next((r["step_calls"] for r in tab["rows"] if r["method"] == "default"), None)
        out.append("")
        if default is not None:  # absent when --methods leaves it out
            out += [f"`default` spent {default[0]} model calls on the clean-end step (inverted first) and "
                    f"{np.mean(default[1:]):.1f} on average on each of the other {len(default) - 1}.", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- edits

def edited_spec(spec, kind: str):
    if kind == "colour":
        names = list(synthetic.COLOURS)
        return dataclasses.replace(spec, colour=names[(names.index(spec.colour) + 1) % len(names)])
    names = list(synthetic.SHAPES)
    return dataclasses.replace(spec, shape=names[(names.index(spec.shape) + 1) % len(names)])


def score_frames(frames, specs, targets, kind, recon) -> dict:
    """Decoded edits [N, F, H, W, 3] against the targets (attribute hit), the sources (direction kept)
    and the sources' VAE reconstructions `recon` (mask IoU, centroid path error); the means, and each video's
    (``per_video``) for paired comparisons."""
    hit, direction, iou, cerr = [], [], [], []
    for f, spec, tgt, ref in zip(frames, specs, targets, recon):
        d = synthetic.describe(f)
        hit.append(d[kind] == getattr(tgt, kind))
        direction.append(d["direction"] == spec.direction)
        iou.append(synthetic.mask_iou(f, ref))
        cerr.append(synthetic.centroid_error(f, ref))
    return {"target_acc": float(np.mean(hit)), "direction_kept": float(np.mean(direction)),
            "mask_iou": float(np.mean(iou)), "centroid_err_px": float(np.mean(cerr)),
            "per_video": {"hit": [bool(h) for h in hit], "iou": [float(v) for v in iou],
                          "path": [float(v) for v in cerr]}}


class PeakRSS:
    """Peak resident memory of the block above its start (CPU runs). Freed heap pages go back to
    the kernel first (malloc_trim) and the kernel's high-water mark is reset (clear_refs 5), so a
    run that reuses an earlier run's pages still shows its own peak."""

    def __enter__(self):
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        self.base = self.status("VmRSS")
        return self

    def __exit__(self, *exc):
        self.mb = (self.status("VmHWM") - self.base) / 1e6

    @staticmethod
    def status(key: str) -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
        return int(line.split()[1]) * 1024


def reconstruction_rows(latents: dict, x0, recon, decode) -> dict:
    """name -> clean latent: relative latent error against x0, and the decoded frames' PSNR and
    centroid error against the source's VAE reconstruction `recon`."""
    out = {}
    for name, z in latents.items():
        frames = decode(z)
        out[name] = {"rel_err": float(np.mean([float((a - b).norm() / b.norm()) for a, b in zip(z, x0)])),
                     "psnr_db": float(np.mean([synthetic.psnr(a, b) for a, b in zip(frames, recon)])),
                     "centroid_err_px": float(np.mean([synthetic.centroid_error(a, b) for a, b in zip(frames, recon)]))}
        print(json.dumps({"reconstruction": name, **out[name]}), flush=True)
    return out


def edit_rows(methods: dict, score_latent, tag: dict, extra_seconds: dict | None = None) -> list[dict]:
    """Run each method (name -> () -> clean latent), timed, and score it; `extra_seconds` adds
    time spent outside the call (e.g. null-text optimisation) to a row."""
    rows = []
    for name, fn in methods.items():
        start = time.time()
        z = fn()
        seconds = time.time() - start + (extra_seconds or {}).get(name, 0.0)
        rows.append({"method": name, "seconds": seconds, **score_latent(z)})
        print(json.dumps({**tag, **rows[-1]}), flush=True)
    return rows


class RowCounter:
    """Network rows run through `modules` (a model's transformers or experts) while active (a forward pre-hook on
    each, counting the batch of its hidden states): what a method costs, whatever it batches into one call."""

    def __init__(self, modules):
        self.rows, self.handles, self.modules = 0, [], list(modules)

    def __enter__(self):
        def hook(module, args, kwargs):
            self.rows += int(kwargs["hidden_states"].shape[0])
        self.handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in self.modules]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def counted_edit_rows(methods: dict, modules, per: int, score_latent, tag: dict) -> list[dict]:
    """`edit_rows`, each row also with ``rows_per_step``: the network rows its method ran through `modules`, divided
    by `per` (videos x steps)."""
    counted = {}

    def counting(name, fn):
        def run_counted():
            with RowCounter(modules) as counter:
                z = fn()
            counted[name] = counter.rows / per
            return z
        return run_counted

    rows = edit_rows({k: counting(k, fn) for k, fn in methods.items()}, score_latent, tag)
    for r in rows:
        r["rows_per_step"] = counted[r["method"]]
    return rows


def counted_table(tab: dict, edits: str = "colour edits") -> list[str]:
    """The markdown lines of a `counted_edit_rows` table."""
    out = [f"**{edits}, guidance {tab['guidance']:g}** (rows/step: network rows per video per step of the edit "
           "itself)", "", "| method | target hit | direction kept | mask IoU | centroid error (px) | rows/step | seconds |",
           "|---|---|---|---|---|---|---|"]
    return out + [f"| {r['method']} | {r['target_acc']:.2f} | {r['direction_kept']:.2f} | {r['mask_iou']:.2f} | "
                  f"{r['centroid_err_px']:.2f} | {r['rows_per_step']:.2f} | {r['seconds']:.1f} |" for r in tab["rows"]]


def time_samplers(samplers: dict, repeats: int) -> dict:
    """name -> () -> latent: median seconds of `repeats` runs after a warm-up, peak memory, and the
    ratio to the "plain" sampler."""
    timing = {}
    for name, fn in samplers.items():
        fn()  # warm up
        times = []
        with PeakRSS() as mem:
            for _ in range(repeats):
                start = time.time()
                fn()
                times.append(time.time() - start)
        timing[name] = {"seconds": float(np.median(times)), "peak_mb": mem.mb}
    for name in timing:
        timing[name]["ratio_to_plain"] = timing[name]["seconds"] / timing["plain"]["seconds"]
    print(json.dumps(timing), flush=True)
    return timing


def guidance_text(g) -> str:
    """CogVideoX's one guidance, or SVD's frame-wise [min, max]."""
    return f"{g[0]:g} -> {g[1]:g}" if isinstance(g, (list, tuple)) else f"{g:g}"


def edit_markdown(result: dict, command: str, model_line: str = "", source: str = "the source prompt",
             edits: str = "edits") -> str:
    """The reconstruction, edit and speed tables of tools/bench_edit.py and tools/bench_svd_edit.py."""
    out = [f"Command: `{command}`  ", f"Machine: {result['machine']}  ",
           f"Model: {result['model']}; {result['videos']} held-out videos, {result['steps']} steps, fp32.{model_line}",
           ""]
    if result["reconstruction"]:  # --methods may leave every row out
        out += [f"Reconstruction with {source} (guidance 1):", "",
                "| method | latent rel. error | PSNR vs VAE recon (dB) | centroid error (px) |", "|---|---|---|---|"]
        for name, r in result["reconstruction"].items():
            out.append(f"| {name} | {r['rel_err']:.2e} | {r['psnr_db']:.1f} | {r['centroid_err_px']:.2f} |")
        out.append("")
    for tab in result["tables"]:
        out += [f"**{tab['edit']} {edits}, guidance {guidance_text(tab['guidance'])}**", "",
                "| method | target hit | direction kept | mask IoU | centroid error (px) | seconds |",
                "|---|---|---|---|---|---|"]
        for r in tab["rows"]:
            out.append(f"| {r['method']} | {r['target_acc']:.2f} | {r['direction_kept']:.2f} | {r['mask_iou']:.2f} | "
                       f"{r['centroid_err_px']:.2f} | {r['seconds']:.1f} |")
        out.append("")
    sp = result.get("speed")
    if sp is None:  # --methods: no speed runs
        return "\n".join(out) + "\n"
    out += [f"Speed, guidance {guidance_text(sp['guidance'])} (CFG on), median of {sp['repeats']}:", "",
            "| sampler | seconds | × plain | peak memory above start (MB) |", "|---|---|---|---|"]
    for name, r in sp["samplers"].items():
        out.append(f"| {name} | {r['seconds']:.2f} | {r['ratio_to_plain']:.2f} | {r['peak_mb']:.0f} |")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- baselines

def naive_trajectory(model, cond, x0, steps, image_latents=None):
    """The published inversion: DDIMInverseScheduler built from the model's config (an image-to-video model's
    with the source's first-frame `image_latents`); on a flow model the inverse Euler step (one call a step)."""
    from diffusers import DDIMInverseScheduler
    from vidinv import ddim, flow
    from vidinv.models import cogvideox
    from vidinv.solver import Solver
    from vidinv.trajectory import Trajectory
    if families.of(model).grid_kind == flow.KIND:
        return pipeline.invert(model, cond, x0, steps, Guidance(1.0), Solver(0, 0.0), image_latents=image_latents)
    den = cogvideox.make_denoiser(model, cond, 1.0, False, steps, image_latents)
    inv = DDIMInverseScheduler(**model.scheduler_config)
    inv.set_timesteps(steps)
    lat = [x0.clone()]
    for t in inv.timesteps:
        lat.append(inv.step(den(lat[-1], int(t)), t, lat[-1], return_dict=False)[0].float())
    schedule = ddim.schedule_from_config(model.scheduler_config)
    return Trajectory(latents=torch.stack(lat), timesteps=ddim.timesteps(schedule, steps),
                      scheduler_config=model.scheduler_config, model_fingerprint=model.fingerprint,
                      model_name=model.name, prompt=cond.prompt, negative_prompt="", embeds=cond.embeds,
                      negative_embeds=cond.negative_embeds, guidance=1.0, dynamic_cfg=False, iterations=0,
                      tolerance=0.0, residuals=[float("nan")] * steps, calls=[1] * steps,
                      image_latents=None if image_latents is None else image_latents.float())


def sdedit(model, cond, x0, steps, guidance, strength, seed=0, image_latents=None):
    """SDEdit: x0 noised with fresh noise to the level at fraction 1 - `strength` of the steps (DDIM: alpha-bar
    there; flow: sigma there), then plain sampling of `cond` (and an image-to-video model's `image_latents`) over
    the rest."""
    from vidinv import ddim, flow
    start = min(steps - 1, int(round(steps * (1 - strength))))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    fam = families.of(model)
    if fam.grid_kind == flow.KIND:
        sigma = fam.grid(model, steps).sigmas[start]
        x = (1 - sigma) * x0 + sigma * noise
    else:
        schedule = ddim.schedule_from_config(model.scheduler_config)
        ab = schedule.alpha_bar(ddim.grid(schedule, steps)[start][0])
        x = ab ** 0.5 * x0 + (1 - ab) ** 0.5 * noise
    return pipeline.sample(model, cond, x, steps, Guidance(guidance), start=start, image_latents=image_latents)


MASK_LABELS = {"attention": "mask", "difference": "diff mask"}
TRUE_MASK = ("true mask", ("true", 0.0, "given"))  # the renderer's mask of the edited object, given as a MASK


def mask_options(thresholds, sources, cuts=("quantile",), true: bool = False, grows=(0,),
                 levels=(1.0,)) -> list[tuple[str, tuple[str, float, str, int, float]]]:
    """The "+ mask" rows of an edit benchmark: (label, (source, threshold, cut, grow, level)) for each mask source
    (`vidinv.editmask.SOURCES`; attention rows are "mask t", difference rows "diff mask t") and cut
    (`vidinv.editmask.CUTS`; the Otsu rows, one per source, "mask otsu" / "diff mask otsu"); with
    `true`, also "true mask" (`TRUE_MASK`: a mask exactly right); each once per latent-cell growth in
    `grows` (Guided Sample's mask_grow; above 0 the label ends "grow N") and each map's once per cut-level
    scale in `levels` (Guided Sample's mask_level; other than 1 the label ends "level L")."""
    out = []
    for s in sources:
        if "quantile" in cuts:
            out += [(f"{MASK_LABELS[s]} {t:g}", (s, t, "quantile")) for t in thresholds]
        if "otsu" in cuts:
            out.append((f"{MASK_LABELS[s]} otsu", (s, 0.0, "otsu")))
    out += [TRUE_MASK] * bool(true)
    return [(label + (f" grow {g}" if g else "") + (f" level {v:g}" if v != 1 else ""), (*mask, g, v))
            for g in grows for v in levels for label, mask in out if v == 1 or mask[0] != "true"]


NODE_DEFAULTS = "node defaults"  # the row of the chain Reference Attention and Guided Sample run at their defaults


def node_defaults(model, traj, cond, guidance: float | Guidance, image_latents=None, recipe=None):
    """The edit of `traj` to `cond` by Reference Attention + Guided Sample at their node defaults, resolved as the
    nodes resolve them: the family's `EditRecipe` (its weight in the first `end` of the steps, its guide, the
    difference mask cut at Otsu's level times its `mask_level`), fresh noise inside the mask, seed 0; a family
    without a prompt (SVD) has no difference mask and starts from the inverted noise, as the node does.
    `image_latents`: an edited first frame's (image-to-video); `recipe`: another `EditRecipe` run the same way."""
    guide = "auto" if recipe is None else recipe.guide  # auto: the family's, as the node resolves it
    fam = families.of(model)
    recipe = recipe or fam.edit_recipe(model)
    patched = pipeline.with_reference(model, traj, ReferenceOptions(weight=recipe.weight, end=recipe.end), guide)
    mask = editmask.EditMask(0.9, source="difference", cut="otsu", level=recipe.mask_level) \
        if fam.text_conditioned else None
    return pipeline.guided_sample(patched, cond, guidance if isinstance(guidance, Guidance) else Guidance(guidance),
                                  "fresh in mask", image_latents=image_latents, edit_mask=mask)


def difference_masks(args) -> list[tuple[str, tuple[str, float, str, int, float]]]:
    """The `mask_options` entries of the prediction-difference mask only (the rows that also exist with a
    FlowEdit or a late start)."""
    return [m for m in mask_options(args.mask_threshold, args.mask_source, args.mask_cut, grows=args.mask_grow,
                                    levels=args.mask_level)
            if m[1][0] == "difference"]


def edit_mask(mask: tuple[str, float, str, int, float] | None, truth: torch.Tensor | None = None):
    """A fresh `EditMask` for one sample, from a `mask_options` entry (None: no mask); the true
    mask's entry gives `truth` (pixel masks ``[B x frames, H, W]``, one video after another)."""
    if mask is None:
        return None
    grow, level = mask[3] if len(mask) > 3 else 0, mask[4] if len(mask) > 4 else 1.0
    if mask[0] == "true":
        return editmask.EditMask(given=truth, grow=grow)
    return editmask.EditMask(mask[1], source=mask[0], cut=mask[2], grow=grow, level=level)


def reference_rows(specs) -> list[tuple]:
    """The `--weights` rows: "W" -> ("ours w=W", weight W), "W/E" -> ("ours w=W end=E", weight W with
    injection in the first fraction E of the steps, `ReferenceOptions.end`)."""
    out = []
    for spec in specs:
        w, _, e = str(spec).partition("/")
        label = f"ours w={float(w):g}" + (f" end={float(e):g}" if e else "")
        out.append((label, ReferenceOptions(weight=float(w), end=float(e) if e else 1.0)))
    return out


def add_reference_arguments(p) -> None:
    p.add_argument("--weights", nargs="*", default=[], metavar="W[/END]",
                   help="rows 'ours w=W' (and with each mask): exact + reference attention at this weight; W/END: "
                        "injecting in the first fraction END of the steps only ('ours w=W end=END')")
    p.add_argument("--fresh-in-mask", action="store_true",
                   help="also the --weights rows with each difference mask started from fresh noise inside the "
                        "mask (Guided Sample's start 'fresh in mask'): '... + fresh in mask'")


def add_video_arguments(p) -> None:
    """--frames / --height / --width of the held-out videos (the size a held-out model was trained at)."""
    p.add_argument("--frames", type=int, default=9, help="frames per held-out video, 4k+1")
    p.add_argument("--height", type=int, default=64, help="held-out video height in pixels")
    p.add_argument("--width", type=int, default=64, help="held-out video width in pixels")


def video_size(args) -> tuple[int, int, int]:
    return args.frames, args.height, args.width


def add_mask_arguments(p, true_mask: bool = False) -> None:
    p.add_argument("--mask-threshold", type=float, nargs="+", default=[0.9],
                   help="quantiles of the '+ mask' rows (0.9: LEDITS++'s default)")
    p.add_argument("--mask-source", nargs="+", choices=list(editmask.SOURCES), default=["attention"],
                   help="maps of the '+ mask' rows: attention ('mask t'), prediction difference ('diff mask t')")
    p.add_argument("--mask-cut", nargs="+", choices=list(editmask.CUTS), default=["quantile"],
                   help="cuts of the '+ mask' rows: per-frame quantiles (--mask-threshold), Otsu's level ('otsu')")
    p.add_argument("--mask-grow", type=int, nargs="+", default=[0], metavar="CELLS",
                   help="each mask row once per growth in latent cells (Guided Sample's mask_grow; above 0 the "
                        "row ends 'grow N')")
    p.add_argument("--mask-level", type=float, nargs="+", default=[1.0], metavar="SCALE",
                   help="each map's mask row once per scale of its cut level (Guided Sample's mask_level; other "
                        "than 1 the row ends 'level L')")
    if true_mask:
        p.add_argument("--true-mask", action="store_true",
                       help="also '+ true mask' rows: the edited object's true pixels given as the mask (a "
                            "mask exactly right)")
