"""Guided samples (float64, tiny random CogVideoX-5B / -2B and Wan 2.1 folders from the tests' writers)
with the library of a given checkout, saved to compare two versions of the library bit for bit:

    python tools/guided_snapshot.py CHECKOUT OUT.pt        (once per checkout)
    python tools/guided_snapshot.py --compare A.pt B.pt

Each sample is an edit (another prompt) of a 3-step trajectory inverted at guidance 1 and under CFG,
sampled at guidance 4 (CogVideoX) / 5 (Wan) with reference attention at the defaults and, for
CogVideoX, with the reference's text tokens at weight 1.
"""
import dataclasses
import sys
import tempfile
from pathlib import Path


def snapshot(root: str, out: str) -> None:
    sys.path.insert(0, root)
    import torch
    torch.set_num_threads(1)
    from tests.tiny_models import write_tiny_model
    from tests.tiny_wan import write_tiny_wan
    from vidinv import pipeline
    from vidinv.attention import ReferenceOptions
    from vidinv.family import Guidance
    from vidinv.models import cogvideox, wan
    from vidinv.solver import Solver

    def f64(model, modules):
        for m in modules:
            m.double()
        return dataclasses.replace(model, dtype=torch.float64)

    res, tmp = {}, Path(tempfile.mkdtemp())
    for v in ("5b", "2b"):
        m = cogvideox.load(write_tiny_model(tmp / f"tiny-{v}", v), "fp32")
        m = f64(m, (m.transformer, m.vae, m.text_encoder))
        src = cogvideox.encode_text(m, "a red circle moving right", "blurry")
        edit = cogvideox.encode_text(m, "a blue circle moving right", "blurry")
        x0 = torch.randn(1, 2, m.latent_channels, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        for g in (1.0, 4.0):
            traj = pipeline.invert(m, src, x0, 3, Guidance(g), Solver(iters=2, tol=0.0))
            for name, o in {"default": ReferenceOptions(), "text-w1": ReferenceOptions(text=True, weight=1.0)}.items():
                res[f"cog{v}-g{g}-{name}"] = pipeline.guided_sample(pipeline.with_reference(m, traj, o), edit,
                                                                    Guidance(4.0))
    m = wan.load(write_tiny_wan(tmp / "tiny-wan"), "fp32")
    m = f64(m, [x for x in (m.transformer, m.vae, m.text_encoder) if x is not None])
    src = wan.encode_text(m, "a red circle moving right", "blurry")
    edit = wan.encode_text(m, "a green circle moving right", "blurry")
    x0 = torch.randn(1, 3, 12, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for g in (1.0, 5.0):
        traj = pipeline.invert(m, src, x0, 3, Guidance(g), Solver(iters=2, tol=0.0))
        res[f"wan-g{g}"] = pipeline.guided_sample(pipeline.with_reference(m, traj), edit, Guidance(5.0))
    torch.save(res, out)
    print(f"{len(res)} samples saved to {out}")


def compare(a: str, b: str) -> None:
    import torch
    x, y = torch.load(a), torch.load(b)
    for k in x:
        print(f"{k}: identical {torch.equal(x[k], y[k])}, max |difference| {float((x[k] - y[k]).abs().max()):.3g}")


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        snapshot(sys.argv[1], sys.argv[2])
