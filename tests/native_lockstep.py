"""The native patch's reference call in lockstep against the old two-pass schedule (`tests/twopass.py`),
in-process on a tiny float64 core `WanModel` with random weights: `ReferencePatch.apply_model` on a CFG
batch, through core's block replacements and attention override, with the trajectory's conditioning
per CFG row or shared, every row or the conditional rows only. Prints one JSON line per case: the
relative difference of the two schedules, how far the reference moves the output, and the most
reference K/V pairs alive when the sample call takes a layer under each schedule.

Runs in the host's Python (the one that has ComfyUI), not the tests' own:

    python tests/native_lockstep.py COMFYUI_TREE
"""
import importlib.util
import json
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name: str, path: Path, package: bool):
    spec = (importlib.util.spec_from_file_location(name, path / "__init__.py", submodule_search_locations=[str(path)])
            if package else importlib.util.spec_from_file_location(name, path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main(tree: str) -> None:
    sys.path.insert(0, tree)
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import torch
    torch.set_num_threads(1)
    from comfy.ldm.wan.model import WanModel
    import comfy.ldm.flux.math as core_math
    import comfy.ldm.wan.model as core_wan
    if hasattr(core_math, "_apply_rope1"):  # newer cores route RoPE through comfy_kitchen, whose CPU kernel takes
        core_wan.apply_rope1 = core_math._apply_rope1  # no float64: core's own torch RoPE for this float64 model
    load("vidinv_pack", ROOT, package=True)
    load("vidinv", ROOT / "vidinv", package=True)  # the copy tests/twopass.py imports (unused here)
    from vidinv_pack.nodes import native
    from vidinv_pack.vidinv import attention
    twopass = load("vidinv_twopass", ROOT / "tests" / "twopass.py", package=False)

    torch.manual_seed(0)
    blocks = 3
    net = WanModel(model_type="t2v", patch_size=(1, 2, 2), in_dim=16, dim=64, ffn_dim=128, freq_dim=32, text_dim=32,
                   out_dim=16, num_heads=2, num_layers=blocks, operations=torch.nn).double().eval()
    g = torch.Generator().manual_seed(1)
    for p in net.parameters():  # core leaves modulation tensors uninitialised
        p.data = torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.1
    net.patch_embedding.float()  # core embeds patches in float32 (its input is cast), the rest runs in float64
    sigmas = [1.0, 0.7, 0.4, 0.0]
    latents = [torch.randn(1, 3, 16, 4, 4, generator=g, dtype=torch.float64) for _ in sigmas]  # pack layout
    text = {k: torch.randn(1, 6, 32, generator=g, dtype=torch.float64) for k in ("pos", "neg", "edit", "edit_neg")}

    def executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        return net(x, t * 1000, context=c_crossattn, transformer_options=transformer_options)

    x = torch.randn(2, 16, 3, 4, 4, generator=g, dtype=torch.float64)  # core layout, [uncond, cond]
    context = torch.cat([text["edit_neg"], text["edit"]])
    for per_row in (False, True):
        conds = {"0.c_crossattn": text["pos"]} | ({"1.c_crossattn": text["neg"]} if per_row else {})
        traj = types.SimpleNamespace(steps=3, sigmas=sigmas, scheduler_config={"ndim": 5}, model_conds=conds,
                                     latent_for_step=lambda i: latents[i])
        for rows in ("all", "conditional"):
            patch = native.ReferencePatch(traj, attention.ReferenceOptions(rows=rows), tuple(range(blocks)))
            options = {"optimized_attention_override": patch, "cond_or_uncond": [1, 0],
                       "patches_replace": {"dit": {("double_block", i): patch.marker(i, None) for i in range(blocks)}}}

            def call():
                return patch.apply_model(executor, x, torch.full((2,), 0.7, dtype=torch.float64), None, context, None,
                                         dict(options))

            with twopass.HeldKV(attention) as held_new:
                new = call()
            original = attention.guided
            attention.guided = twopass.guided_for(attention)
            try:
                with twopass.HeldKV(attention) as held_old:
                    old = call()
            finally:
                attention.guided = original
            plain = executor(x, torch.full((2,), 0.7, dtype=torch.float64), None, context, None, {})
            print(json.dumps({"per_cfg_row": per_row, "rows": rows, "blocks": blocks,
                              "rel": float((new - old).norm() / old.norm()),
                              "moved": float((new - plain).norm() / plain.norm()),
                              "held_new": max(held_new.alive), "held_old": max(held_old.alive),
                              "takes_new": len(held_new.alive)}), flush=True)


if __name__ == "__main__":
    import torch
    with torch.inference_mode():  # as ComfyUI runs a node
        main(sys.argv[1])
