"""Edit benchmark for image-to-video models (the bundled tiny-cogvideox-i2v, any CogVideoX I2V folder, or a Wan I2V
folder: `tools/train_wan_fixture.py i2v` trains one): the prompt names the next colour and the first frame is
recoloured, and the edit is propagated through the video. The metrics of tools/bench_edit.py; one table of colour
edits with the rows each method ran.

    python tools/bench_i2v_edit.py [--model FOLDER] [--videos 16] [--chains 2/trajectory/1 ...] [--json out.json]
    python tools/bench_i2v_edit.py --model WAN_I2V --flowedit 33/0/3.5/13.5 [...]

Each held-out video is inverted with its caption and its own first frame (exact inversion, guidance 1). The
edited first frame is the generator's frame 0 of the edited video (what an image editor would give); every method
samples the edited caption from it. Metrics on the decoded edit: target colour hit, direction kept, per-frame
foreground-mask IoU and centroid path error against the source's VAE reconstruction. Methods:
  ground truth       the edited video drawn by the generator, through the VAE: the metrics' ceiling
  fresh noise        plain image-to-video from the edited frame (what the model gives without inversion)
  naive              the published inversion (CogVideoX: DDIMInverseScheduler; Wan: the inverse Euler step) with
                     the source frame, plain sampling of the edit
  published          fresh noise, reference K/V in every block and step from the naive trajectory, computed with
                     the edit prompt (per CFG row): the published recipe
  sdedit s           the source noised to strength s, then plain sampling of the edit
  exact              exact inversion, plain sampling of the edit (no injection)
  node defaults      Reference Attention + Guided Sample at their node defaults on this model (`EditRecipe`)
  chain W/G/L        the same chain with reference weight W in the first 40 % of the steps, guide G (trajectory or
                     one-call), the difference mask cut at L x Otsu's level, fresh noise inside it
  flowedit N/M g/h   Wan: FlowEdit (`pipeline.flow_edit`, no inversion) from the source latent, the source velocity
                     with the source frame and caption, the target's with the edited ones; n_max N, n_min M, source
                     and target guidance g / h (--flowedit N/M/g/h ...)
Rows per step count every network row of the edit (the one-call guide's inversion included where a chain makes it);
the exact trajectory's calls per step are printed once. Reconstruction rows: the source caption and frame.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.benchkit import (NODE_DEFAULTS, add_video_arguments, counted_edit_rows, counted_table,  # noqa: E402
                            edit_markdown, edited_spec, encode_heldout, flowedit_specs, machine, naive_trajectory,
                            node_defaults, reconstruction_rows, report, score_frames, sdedit, stack_conditions,
                            video_size)
from vidinv import families, pipeline, synthetic  # noqa: E402
from vidinv.attention import ReferenceOptions  # noqa: E402
from vidinv.family import GUIDES, EditRecipe, Guidance  # noqa: E402
from vidinv.models import cogvideox, loading, wan  # noqa: E402
from vidinv.solver import Solver  # noqa: E402


def chains(specs) -> dict:
    """--chains "W/G/L" -> {"chain W/G/L": EditRecipe(weight W, guide G, mask_level L)}; refused before any work."""
    out = {}
    for spec in specs:
        try:
            w, g, level = spec.split("/")
            recipe = EditRecipe(weight=float(w), guide=g, mask_level=float(level))
        except ValueError:
            raise SystemExit(f"--chains {spec!r}: give WEIGHT/GUIDE/LEVEL, e.g. 8/one-call/0.9") from None
        if g not in GUIDES or not recipe.mask_level > 0 or recipe.weight < 0:
            raise SystemExit(f"--chains {spec!r}: the guide is one of {', '.join(GUIDES)}, the weight >= 0, the "
                             "level > 0")
        out[f"chain {spec}"] = recipe
    return out


def load(folder):
    """An image-to-video model of either family (the folder's model_index.json names its pipeline) and its module."""
    name = loading.read_json(Path(folder) / "model_index.json").get("_class_name", "")
    module = wan if name.startswith("Wan") else cogvideox
    model = module.load(folder, "fp32")
    if not getattr(model, "is_i2v", False):
        raise SystemExit(f"{folder} is not an image-to-video model ({model.describe()}); tools/bench_edit.py and "
                         "tools/bench_wan.py edit text-to-video models")
    return model, module


def first_frames(model, x0, videos):
    """The first-frame conditioning of each video's frame 0, one row per video (as the nodes encode it)."""
    fam = families.of(model)
    return stack_conditions([fam.first_frame_latents(model, x0[:1], torch.from_numpy(synthetic.render(v)[:1]))
                             for v in videos])


def run(args) -> dict:
    recipes = chains(args.chains)
    flowedits = {f"flowedit {n}/{m} {gs:g}/{gt:g}": (n, m, gs, gt) for n, m, gs, gt in flowedit_specs(args.flowedit)}
    torch.set_num_threads(args.threads)
    model, module = load(args.model)
    if flowedits and module is not wan:
        raise SystemExit("--flowedit: FlowEdit needs a flow model (Wan); this is a CogVideoX")
    specs, x0 = encode_heldout(model, args.videos, video_size(args))
    shape = (len(specs), -1, specs[0].height, specs[0].width, 3)
    steps, g = args.steps, args.guidance

    def decode(z):
        return module.decode_video(model, z).numpy().reshape(shape)

    recon = decode(x0)
    src, src_image = module.encode_text(model, [s.caption for s in specs]), first_frames(model, x0, specs)
    exact = pipeline.invert(model, src, x0, steps, Guidance(1.0), Solver(iters=10, tol=1e-5), image_latents=src_image)
    naive = naive_trajectory(model, src, x0, steps, src_image)
    published = ReferenceOptions(reference_text="edit")

    def guided(traj, opts, cond, image, start="inverted"):
        return pipeline.guided_sample(pipeline.with_reference(model, traj, opts), cond, Guidance(g), start=start,
                                      image_latents=image)

    result = {"model": model.describe(), "machine": machine(), "videos": len(specs), "steps": steps,
              "exact_calls_per_step": float(np.mean(exact.calls)), "tables": []}
    recon_rows = {"exact plain": lambda: pipeline.sample(model, src, exact.noise, steps, image_latents=src_image),
                  "published": lambda: guided(naive, published, src, src_image, "fresh"),
                  NODE_DEFAULTS: lambda: node_defaults(model, exact, src, 1.0, src_image),
                  **{name: (lambda r=r: node_defaults(model, exact, src, 1.0, src_image, r))
                     for name, r in recipes.items()}}
    result["reconstruction"] = reconstruction_rows({name: fn() for name, fn in recon_rows.items()}, x0, recon, decode)

    targets = [edited_spec(s, "colour") for s in specs]
    edit, image = module.encode_text(model, [t.caption for t in targets]), first_frames(model, x0, targets)
    fresh = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    methods = {
        "ground truth (VAE)": lambda: torch.cat([module.encode_video(model, torch.from_numpy(synthetic.render(t)))
                                                 for t in targets]),
        "fresh noise": lambda: pipeline.sample(model, edit, fresh, steps, Guidance(g), image_latents=image),
        "naive": lambda: pipeline.sample(model, edit, naive.noise, steps, Guidance(g), image_latents=image),
        "published": lambda: guided(naive, published, edit, image, "fresh"),
        **{f"sdedit {s:g}": (lambda s=s: sdedit(model, edit, x0, steps, g, s, image_latents=image))
           for s in args.sdedit},
        "exact": lambda: pipeline.sample(model, edit, exact.noise, steps, Guidance(g), image_latents=image),
        NODE_DEFAULTS: lambda: node_defaults(model, exact, edit, g, image),
        **{name: (lambda r=r: node_defaults(model, exact, edit, g, image, r)) for name, r in recipes.items()},
        **{name: (lambda f=f: pipeline.flow_edit(model, src, edit, x0, steps, f[0], f[1], 1, Guidance(f[2]),
                                                 Guidance(f[3]), 0, src_image, target_image_latents=image))
           for name, f in flowedits.items()},
    }
    methods = {k: v for k, v in methods.items() if not args.methods or k in args.methods}
    rows = counted_edit_rows(methods, families.of(model).networks(model), len(specs) * steps,
                             lambda z: score_frames(decode(z), specs, targets, "colour", recon),
                             {"edit": "colour", "guidance": g})
    result["tables"].append({"edit": "colour", "guidance": g, "rows": rows})
    return result


def markdown(result: dict, command: str) -> str:
    head = edit_markdown({**result, "tables": []}, command, source="the source caption and first frame")
    out = [head.rstrip("\n"), ""]
    for tab in result["tables"]:
        out += counted_table(tab, "colour edits (prompt and first frame)")
    out += ["", f"The exact trajectory the chains start from: {result['exact_calls_per_step']:.2f} calls per video "
            "per step (guidance 1), once per video.", ""]
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "assets" / "tiny-cogvideox-i2v"))
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--sdedit", type=float, nargs="*", default=[0.5, 0.7])
    p.add_argument("--chains", nargs="*", default=[], metavar="W/G/L",
                   help="rows 'chain W/G/L': reference weight W, guide G (trajectory or one-call), difference mask "
                        "at L x Otsu's level, fresh noise inside it")
    p.add_argument("--flowedit", nargs="*", default=[], metavar="N/M/g/h",
                   help="Wan: rows 'flowedit N/M g/h' (n_max, n_min, source and target guidance)")
    add_video_arguments(p)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", nargs="*", default=[], help="only these edit rows (all when empty)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    report(run(args), markdown, "bench_i2v_edit.py", argv, args.json)


if __name__ == "__main__":
    main()
