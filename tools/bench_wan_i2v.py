"""Wan image-to-video exactness: round trips and guided reconstruction on a tiny random Wan 2.1 I2V
folder (tests/tiny_wan.py, ``i2v=True``: the I2V 14B layout at toy size), conditioned on each video's
first frame as WanImageToVideoPipeline conditions (mask + first-frame latent on channels, CLIP
tokens in cross-attention). Edits are not scored here: tools/bench_i2v_edit.py scores them on a trained Wan I2V
(`tools/train_wan_fixture.py i2v`; none is bundled).

    python tools/bench_wan_i2v.py [--videos 8] [--steps 50] [--size 32] [--json results.json]

Each held-out video of the CogVideoX benchmarks, resized to --size, is inverted with its caption
(flow Euler, exact: `Solver()` defaults; naive: the inverse Euler step) at guidance 1 and 5 and
sampled back with the same guidance; then Reference Attention (defaults) + Guided Sample with the
source prompt from each exact trajectory.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
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


def encode(model, specs, size: int):
    """Latents [B, F, C, h, w] and their first-frame conditioning (one row per video)."""
    fam = families.of(model)
    parts = [fam.encode_frames(model, torch.from_numpy(synthetic.render(s)), "trim to 4k+1", "resize and crop",
                               size, size, "off") for s in specs]
    return torch.cat([p[0] for p in parts]), stack_conditions([p[1] for p in parts])


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    folder = write_tiny_wan(Path(tempfile.mkdtemp()) / "tiny-wan-i2v", seed=4, i2v=True)
    model = wan.load(folder, "fp32")
    specs = synthetic.heldout_specs(args.videos)
    x0, image = encode(model, specs, args.size)
    src = wan.encode_text(model, [s.caption for s in specs])
    steps = args.steps
    result = {"model": model.describe(), "machine": machine(), "videos": len(specs), "steps": steps,
              "latent": list(x0.shape[1:]), "clip_tokens": list(image.embeds.shape[1:]), "tables": []}
    for g in (1.0, args.guidance):
        rows = []
        for name, settings in (("default", Solver()), ("naive (inverse Euler step)", Solver(0, 0.0))):
            calls, start = [0], time.time()
            traj = pipeline.invert(model, src, x0, steps, Guidance(g), settings, image_latents=image,
                                   hooks=CountingHooks(calls))
            back = pipeline.sample(model, src, traj.noise, steps, Guidance(g), image_latents=image)
            errs = rel_err(back, x0)
            row = {"method": name, "rel_err": float(np.mean(errs)), "rel_err_max": float(np.max(errs)),
                   "calls_per_step": calls[0] / steps, "seconds": time.time() - start}
            if name == "default":
                guided = pipeline.guided_sample(pipeline.with_reference(model, traj, ReferenceOptions()), src,
                                                Guidance(g))
                row["guided_vs_plain"] = float(np.mean(rel_err(guided, back)))
            rows.append(row)
            print(row, flush=True)
        result["tables"].append({"guidance": g, "rows": rows})
    return result


def markdown(result: dict, command: str) -> str:
    out = [f"Command: `{command}`  ", f"Machine: {result['machine']}  ",
           f"Model: {result['model']}; {result['videos']} held-out videos, latent {result['latent']}, "
           f"CLIP tokens {result['clip_tokens']}, {result['steps']} steps, fp32.", "",
           "| guidance | method | latent rel. error (mean / max) | model calls / step | guided sample vs plain (rel. difference) "
           "| seconds |", "|---|---|---|---|---|---|"]
    for tab in result["tables"]:
        for r in tab["rows"]:
            guided = f"{r['guided_vs_plain']:.2e}" if "guided_vs_plain" in r else "–"
            out.append(f"| {tab['guidance']:g} | {r['method']} | {r['rel_err']:.2e} / {r['rel_err_max']:.2e} | "
                       f"{r['calls_per_step']:.2f} | {guided} | {r['seconds']:.1f} |")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    report(run(args), markdown, "bench_wan_i2v.py", argv, args.json)


if __name__ == "__main__":
    main()
