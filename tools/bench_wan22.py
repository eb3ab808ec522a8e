"""Wan 2.2 exactness on tiny random folders of its three diffusers layouts (tests/tiny_wan.py): two
experts (T2V A14B), TI2V-5B image-to-video, I2V A14B (two experts + channel conditioning, no CLIP).
No trained Wan 2.2 ships with the pack, so edits are not scored here.

    python tools/bench_wan22.py [--videos 2] [--json results.json]

Per layout: the pack's Flow Sample against diffusers' own pipeline (WanPipeline /
WanImageToVideoPipeline, FlowMatchEuler, the folder's shift) from the same noise at guidance 1 and 4,
8 steps, the two-expert boundary between two steps and on a step; then held-out videos (the
CogVideoX benchmarks' scenes, resized) inverted with their captions at 20 and 50 steps, guidance 1
and 4 (`Solver()` defaults, fp32), sampled back, and Reference Attention (defaults) + Guided Sample
with the source prompt against plain sampling.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.tiny_wan import write_tiny_wan  # noqa: E402
from tools.benchkit import CountingHooks, machine, rel_err, report, stack_conditions  # noqa: E402
from vidinv import families, pipeline, synthetic  # noqa: E402
from vidinv.attention import ReferenceOptions  # noqa: E402
from vidinv.family import Guidance  # noqa: E402
from vidinv.models import wan  # noqa: E402
from vidinv.solver import Solver  # noqa: E402

LAYOUTS = {  # name: (write_tiny_wan arguments, pixel size)
    "two experts (T2V A14B layout)": (dict(seed=5, boundary_ratio=0.875), 16),
    "TI2V-5B layout, image-to-video": (dict(seed=6, ti2v=True), 32),
    "I2V A14B layout": (dict(seed=7, i2v=True, boundary_ratio=0.9), 16),
}


def oracle(folder: Path, model, size: int, where: str, g: float) -> float:
    """Relative difference of Flow Sample to the diffusers pipeline, 8 steps, the boundary between
    steps 3 and 4 or on step 3 (two experts)."""
    from diffusers import WanImageToVideoPipeline, WanPipeline
    steps, k = 8, 3
    first = PIL.Image.fromarray((np.random.default_rng(1).random((size, size, 3)) * 255).astype("uint8"))
    if model.is_i2v:
        pipe = WanImageToVideoPipeline.from_pretrained(folder)
    elif model.first_frame_in_place:
        t2v = WanPipeline.from_pretrained(folder)
        pipe = WanImageToVideoPipeline(tokenizer=t2v.tokenizer, text_encoder=t2v.text_encoder, vae=t2v.vae,
                                       scheduler=t2v.scheduler, transformer=t2v.transformer, image_encoder=None,
                                       image_processor=None, expand_timesteps=True)
    else:
        pipe, first = WanPipeline.from_pretrained(folder), None
    if model.transformer_2 is not None:
        ts = families.of(model).grid(model, steps).timesteps
        ratio = ts[k] / 1000 if where == "on" else (ts[k] + ts[k + 1]) / 2000
        pipe.register_to_config(boundary_ratio=ratio)
        model = dataclasses.replace(model, boundary_ratio=ratio)
    cond = wan.encode_text(model, "a red circle moving right", "a square")
    h = size // model.spatial_factor
    noise = torch.randn(1, model.latent_channels, 3, h, h, generator=torch.Generator().manual_seed(0))
    extra = {} if first is None else dict(image=first)
    want = pipe(prompt_embeds=cond.embeds, negative_prompt_embeds=cond.negative_embeds, latents=noise, num_frames=5,
                height=size, width=size, num_inference_steps=steps, guidance_scale=g, output_type="latent",
                **extra).frames.permute(0, 2, 1, 3, 4)
    image = None if first is None else wan.encode_image_condition(
        model, torch.from_numpy(np.asarray(first)).float().div(255)[None], 3)
    got = pipeline.sample(model, cond, noise.permute(0, 2, 1, 3, 4), steps, Guidance(g), image_latents=image)
    return float((got - want).norm() / want.norm())


def encode(model, specs, size: int):
    fam = families.of(model)
    parts = [fam.encode_frames(model, torch.from_numpy(synthetic.render(s)), "trim to 4k+1", "resize and crop",
                               size, size, "off") for s in specs]
    return torch.cat([p[0] for p in parts]), stack_conditions([p[1] for p in parts])


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    result = {"machine": machine(), "layouts": []}
    specs = synthetic.heldout_specs(args.videos)
    for name, (kwargs, size) in LAYOUTS.items():
        folder = write_tiny_wan(Path(tempfile.mkdtemp()) / "tiny-wan22", **kwargs)
        model = wan.load(folder, "fp32")
        layout = {"name": name, "model": model.describe(), "oracle": [], "rows": []}
        for where in (("between", "on") if model.transformer_2 is not None else ("-",)):
            for g in (1.0, 4.0):
                layout["oracle"].append({"boundary": where, "guidance": g, "rel": oracle(folder, model, size, where, g)})
                print(layout["oracle"][-1], flush=True)
        x0, image = encode(model, specs, size)
        src = wan.encode_text(model, [s.caption for s in specs])
        layout["latent"] = list(x0.shape[1:])
        for steps in args.steps:
            for g in (1.0, 4.0):
                calls, start = [0], time.time()
                traj = pipeline.invert(model, src, x0, steps, Guidance(g), Solver(), image_latents=image,
                                       hooks=CountingHooks(calls))
                back = pipeline.sample(model, src, traj.noise, steps, Guidance(g), image_latents=image)
                guided = pipeline.guided_sample(pipeline.with_reference(model, traj, ReferenceOptions()), src,
                                                Guidance(g))
                row = {"steps": steps, "guidance": g, "rel_err": float(np.max(rel_err(back, x0))),
                       "calls_per_step": calls[0] / steps, "guided_vs_plain": float(np.max(rel_err(guided, back))),
                       "seconds": time.time() - start}
                layout["rows"].append(row)
                print(row, flush=True)
        result["layouts"].append(layout)
    return result


def markdown(result: dict, command: str) -> str:
    out = [f"Command: `{command}`  ", f"Machine: {result['machine']}", ""]
    for lay in result["layouts"]:
        out += [f"**{lay['name']}**: {lay['model']}; latent {lay['latent']}.", "",
                "Flow Sample vs diffusers' pipeline (8 steps, rel. difference): " + ", ".join(
                    f"guidance {o['guidance']:g}" + ("" if o["boundary"] == "-" else f", boundary {o['boundary']} a step")
                    + f" {o['rel']:.1e}" for o in lay["oracle"]), "",
                "| steps | guidance | round trip (max rel. error) | model calls / step | guided vs plain | seconds |",
                "|---|---|---|---|---|---|"]
        out += [f"| {r['steps']} | {r['guidance']:g} | {r['rel_err']:.2e} | {r['calls_per_step']:.2f} | "
                f"{r['guided_vs_plain']:.2e} | {r['seconds']:.1f} |" for r in lay["rows"]]
        out.append("")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=2)
    p.add_argument("--steps", type=int, nargs="+", default=[20, 50])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    report(run(args), markdown, "bench_wan22.py", argv, args.json)


if __name__ == "__main__":
    main()
