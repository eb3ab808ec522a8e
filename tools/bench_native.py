"""The native path on the bundled tiny Wan, beside the diffusers path on the same weights and videos.

    <ComfyUI's python> tools/bench_native.py [--comfyui DIR] [--videos 8] [--steps 50] [--json out.json]

Runs in-process inside a ComfyUI checkout (default: the host's `.host/comfyui` next to the repo, or
--comfyui), on the CPU. The bundled `assets/tiny-wan` transformer (diffusers `WanTransformer3DModel`)
is converted to core's `WanModel` key layout and built with an explicit config (core's detection
would guess 128-wide heads, freq_dim 256 and text_dim 4096, which this fixture does not have), then
wrapped in core's ModelPatcher with the fixture's flow shift. Text comes from the pack's Wan text
encoder, latents from the pack's VAE (handed to core as `process_latent_out` of the pack's
normalised latent, so that core's internal latent is the pack's), decoding for the metrics from
the pack's VAE.

Checks first (the measurements are refused when they fail): every tensor maps, core's model
output against the diffusers transformer, core's latent round trip, core's `simple` sigmas against
the pack's flow grid (core samples on the pack's grid, given as SIGMAS), core's Euler sampling
against the pack's Flow Sample from the same noise at guidance 1 and 5.

Measured, native (Invert (native) + core's CFGGuider / euler + the InvertedNoise, Reference
Attention (native) at its defaults) and diffusers path (`vidinv.pipeline`, as tools/bench_wan.py):
  round trip        exact inversion at guidance 1 and 5 (10 refinements per step on average,
                    tolerance 1e-5, Anderson), sampled back with the same guidance
  guided recon.     the patched model / reference attention with the source prompt, from the
                    guidance-1 trajectory at guidance 1 and the guidance-5 trajectory at guidance 5
  colour edits      the next colour's caption at guidance 5 from the guidance-1 inverted noise:
                    "exact" (plain sampling) and "ours default" (reference attention, weight 4,
                    all blocks, all steps), scored as tools/bench_wan.py does
  speed             plain vs guided sampling of the edit at guidance 5, interleaved rounds, median
                    of --repeats (wall and process CPU seconds)
  FlowEdit          FlowEdit (native) on core's MODEL beside the pack's FlowEdit (`pipeline.flow_edit`)
                    at the nodes' defaults (n_max 33 of the steps, n_min 0, n_avg 1, guidance 3.5 / 13.5,
                    seed 0): the colour edit scored, the two edits' relative difference, and the source
                    prompt on both sides (guidance 3.5 / 3.5) against the source latent
                    (--flowedit-only: the checks and this part alone)

On a CPU shared with other work use --threads 1: with 2 threads and another process busy on the
second core, torch's thread pool waited its way to ~20x slower model calls here (4.4 s vs 0.22 s
for one 16-row call of the fixture). The full run (8 videos, 50 steps) took 588 s on one thread.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- imports

def load_package(name: str, folder: Path):
    """Import `folder` as the top-level package `name` without putting the repo root on sys.path
    (its `nodes` package would shadow core's `nodes`)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def setup(comfyui: Path, threads: int):
    """Core (on the CPU) and the pack: the pack as ComfyUI loads a custom node (`vidinv_pack`, its
    nodes and library), and the pack's library and benchmark kit as top-level `vidinv` / `tools` for
    the diffusers path (a second copy of the library: each path uses only its own)."""
    if not (comfyui / "comfy").is_dir():
        raise SystemExit(f"no ComfyUI checkout at {comfyui} (give --comfyui)")
    sys.path.insert(0, str(comfyui))
    os.chdir(comfyui)
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401  (device selection reads the args)
    torch.set_num_threads(threads)
    load_package("vidinv_pack", ROOT)
    load_package("vidinv", ROOT / "vidinv")
    load_package("tools", ROOT / "tools")
    import nodes  # core's, not the pack's
    assert Path(nodes.__file__).resolve().parent == comfyui.resolve(), nodes.__file__


# ----------------------------------------------------------------------------- the weights

TOP = {  # diffusers WanTransformer3DModel -> core WanModel, outside the blocks
    "patch_embedding": "patch_embedding",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "proj_out": "head.head",
}
BLOCK = {  # inside blocks.N (diffusers norm2 is the affine cross-attention norm, core's norm3;
    # diffusers norm1 / norm3 and core norm1 / norm2 carry no weights)
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o", "attn1.norm_q": "self_attn.norm_q", "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o", "attn2.norm_q": "cross_attn.norm_q", "attn2.norm_k": "cross_attn.norm_k",
    "norm2": "norm3", "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}


def core_key(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key) or re.fullmatch(r"blocks\.(\d+)\.(scale_shift_table)", key)
    if m:
        if m.group(2) == "scale_shift_table":
            return f"blocks.{m.group(1)}.modulation"
        return f"blocks.{m.group(1)}.{BLOCK[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"(.+)\.(weight|bias)", key)
    return f"{TOP[m.group(1)]}.{m.group(2)}"


def convert(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        new = core_key(k)
        if new in out:
            raise ValueError(f"two diffusers keys map to {new}")
        out[new] = v.detach().float().clone()
    return out


def core_model(transformer, shift: float):
    """Core's Wan 2.1 T2V with this transformer's config and weights, as a ModelPatcher (fp32)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    c = transformer.config
    unet_config = {"image_model": "wan2.1", "model_type": "t2v", "dim": c.num_attention_heads * c.attention_head_dim,
                   "num_heads": c.num_attention_heads, "ffn_dim": c.ffn_dim, "freq_dim": c.freq_dim,
                   "text_dim": c.text_dim, "num_layers": c.num_layers, "in_dim": c.in_channels,
                   "out_dim": c.out_channels, "patch_size": tuple(c.patch_size), "eps": c.eps,
                   "qk_norm": bool(c.qk_norm), "cross_attn_norm": bool(c.cross_attn_norm), "window_size": (-1, -1)}
    config = comfy.supported_models.WAN21_T2V(unet_config)
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({})
    sd = convert(transformer.state_dict())
    want = base.diffusion_model.state_dict()
    missing, extra = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
    shapes = [k for k in sd if k in want and tuple(sd[k].shape) != tuple(want[k].shape)]
    if missing or extra or shapes:
        raise SystemExit(f"key mapping: missing {missing}, unexpected {extra}, shape mismatch {shapes}")
    base.diffusion_model.load_state_dict(sd, strict=True)
    base.model_sampling.set_parameters(shift=shift)
    patcher = comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    return patcher, {"tensors": len(sd), "parameters": int(sum(v.numel() for v in sd.values())),
                     "unet_config": {k: list(v) if isinstance(v, tuple) else v for k, v in unet_config.items()},
                     "model_sampling": type(patcher.get_model_object("model_sampling")).__name__,
                     "dtype": str(base.get_dtype())}


# ----------------------------------------------------------------------------- layouts

def to_core(x):  # pack [B, F, C, H, W] -> core [B, C, F, H, W]
    return x.permute(0, 2, 1, 3, 4).contiguous()


def to_pack(x):
    return x.permute(0, 2, 1, 3, 4).contiguous()


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def interleaved_timing(samplers: dict, repeats: int, pairs: dict) -> dict:
    """name -> () -> latent: one warm-up each, then `repeats` rounds running every sampler once in
    turn (so that load from other processes hits all of them alike); median wall and process CPU
    seconds, and for each pair (guided -> its plain) the median of the per-round ratios."""
    for fn in samplers.values():
        fn()
    wall = {k: [] for k in samplers}
    cpu = {k: [] for k in samplers}
    for _ in range(repeats):
        for name, fn in samplers.items():
            w, c = time.time(), time.process_time()
            fn()
            wall[name].append(time.time() - w)
            cpu[name].append(time.process_time() - c)
    out = {k: {"seconds": float(np.median(wall[k])), "cpu_seconds": float(np.median(cpu[k])), "wall_runs": wall[k],
               "cpu_runs": cpu[k]} for k in samplers}
    for guided, plain in pairs.items():
        out[guided]["ratio_to_plain"] = float(np.median([a / b for a, b in zip(wall[guided], wall[plain])]))
        out[guided]["cpu_ratio_to_plain"] = float(np.median([a / b for a, b in zip(cpu[guided], cpu[plain])]))
    print(json.dumps(out), flush=True)
    return out


# ----------------------------------------------------------------------------- the run

def run(args) -> dict:
    setup(Path(args.comfyui), args.threads)
    import comfy.samplers
    from tools.benchkit import (edit_rows, edited_spec, encode_heldout, machine, reconstruction_rows, rel_err,
                                score_frames)
    from vidinv import editmask, pipeline, synthetic
    from vidinv.attention import ReferenceOptions
    from vidinv.family import Guidance
    from vidinv.models import wan
    from vidinv.solver import Solver
    pack_nodes = sys.modules["vidinv_pack"].NODE_CLASS_MAPPINGS
    Invert, Patch = pack_nodes["VInvNativeInvert"], pack_nodes["VInvNativeReferenceAttention"]
    NativeFlowEdit = pack_nodes["VInvNativeFlowEdit"]

    t_start = time.time()
    model = wan.load(args.model, "fp32")
    steps, g = args.steps, args.guidance
    specs, x0 = encode_heldout(model, args.videos)  # [B, F, C, h, w], the pack's normalised latents
    src = wan.encode_text(model, [s.caption for s in specs])
    targets = [edited_spec(s, "colour") for s in specs]
    edit = wan.encode_text(model, [t.caption for t in targets])
    grid = wan.FAMILY.grid(model, steps)
    pack_sigmas = torch.tensor(grid.sigmas, dtype=torch.float32)

    def decode(z):
        frames = wan.decode_video(model, z).numpy()
        return frames.reshape(len(z), -1, *frames.shape[1:])

    recon = decode(x0)
    mp, built = core_model(model.transformer, model.flow_shift)
    base = mp.model
    forwards = [0]
    base.diffusion_model.register_forward_pre_hook(lambda *a: forwards.__setitem__(0, forwards[0] + 1))
    result = {"model": model.describe(), "machine": machine(), "videos": len(specs), "steps": steps,
              "guidance": g, "shift": model.flow_shift, "core": built}
    pos, neg = [[src.embeds, {}]], [[src.negative_embeds, {}]]
    pos_edit = [[edit.embeds, {}]]

    # -------------------------------------------------------------- checks
    checks = {}
    w = base.diffusion_model.text_embedding[0].weight
    checks["text_embedding_in"] = int(w.shape[1])
    checks["conditioning_shape"] = list(src.embeds.shape)
    if src.embeds.shape[-1] != w.shape[1]:
        raise SystemExit(f"text embeddings {tuple(src.embeds.shape)} do not fit core's text_embedding {tuple(w.shape)}")
    latent = {"samples": base.process_latent_out(to_core(x0))}
    back = to_pack(base.process_latent_in(latent["samples"]))
    checks["latent_in_out_max_abs"] = float((back - x0).abs().max())
    checks["latent_in_out_rel"] = rel(back, x0)
    ms = mp.get_model_object("model_sampling")
    simple = comfy.samplers.calculate_sigmas(ms, "simple", steps).float()
    checks["simple_vs_pack_sigmas_max_abs"] = float((simple - pack_sigmas).abs().max())
    checks["simple_sigmas_head"] = [round(float(s), 6) for s in simple[:3]] + [round(float(s), 6) for s in simple[-3:]]
    checks["pack_sigmas_head"] = [round(float(s), 6) for s in pack_sigmas[:3]] + [round(float(s), 6) for s in pack_sigmas[-3:]]
    sigmas = pack_sigmas.clone()  # core samples on the pack's grid
    gen = torch.Generator().manual_seed(7)
    model_err = []
    with torch.inference_mode():
        for sigma in (float(pack_sigmas[0]), float(pack_sigmas[steps // 2]), float(pack_sigmas[-2])):
            x = torch.randn(x0.shape, generator=gen)
            v_pack = wan.transformer_call(model, x, src.embeds, 1000.0 * sigma).cpu()
            v_core = to_pack(base.diffusion_model(to_core(x), torch.full((len(x),), 1000.0 * sigma), src.embeds))
            d_core = to_pack(base.apply_model(to_core(x), torch.full((len(x),), sigma), c_crossattn=src.embeds))
            model_err.append({"sigma": sigma, "velocity_rel": rel(v_core, v_pack),
                              "velocity_max_abs": float((v_core - v_pack).abs().max()),
                              "denoised_rel": rel(d_core, x - sigma * v_pack)})
    checks["model_output"] = model_err
    print(json.dumps({"checks": checks}), flush=True)
    worst = max(e["velocity_rel"] for e in model_err)
    if worst > 1e-4:
        raise SystemExit(f"core's WanModel differs from the diffusers transformer: relative {worst:.2e}")

    def core_sample(patcher, positive, cfg, noise, latent_image=None):
        guider = comfy.samplers.CFGGuider(patcher)
        guider.set_conds(positive, neg)
        guider.set_cfg(cfg)
        lat = latent["samples"] if latent_image is None else latent_image
        with torch.inference_mode():
            out = guider.sample(noise, lat, comfy.samplers.sampler_object("euler"), sigmas.clone(), seed=0,
                                disable_pbar=True)
            out = to_pack(base.process_latent_in(out.float()))
        return out.clone()

    fresh = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    sampling_err = {}
    for cfg in (1.0, g):
        a = pipeline.sample(model, src, fresh, steps, Guidance(cfg))
        b = core_sample(mp, pos, cfg, to_core(fresh), torch.zeros_like(latent["samples"]))
        sampling_err[f"{cfg:g}"] = {"rel": rel(b, a), "max_abs": float((b - a).abs().max())}
    checks["sampling_core_vs_pack"] = sampling_err
    print(json.dumps({"sampling_core_vs_pack": sampling_err}), flush=True)
    result["checks"] = checks
    score = lambda z: score_frames(decode(z), specs, targets, "colour", recon)  # noqa: E731

    # -------------------------------------------------------------- FlowEdit
    def native_flow_edit(target, cfg_src, cfg_tar, noise_mask=None):
        lat = latent if noise_mask is None else {**latent, "noise_mask": noise_mask}
        with torch.inference_mode():
            out, = NativeFlowEdit().edit(mp, pos, target, neg, sigmas.clone(), lat, 33, 0, 1, cfg_src, cfg_tar, 0)
            return to_pack(base.process_latent_in(out["samples"].float())).clone()

    # with a mask: the objects' true pixels grown by a latent cell, the pack's latent mask of them given to the pack
    # FlowEdit, and as the LATENT's noise_mask (core's layout, the latent's size: core's resize keeps it) to the native
    truth = torch.from_numpy(np.concatenate([synthetic.foreground_mask(synthetic.render(s)) for s in specs])).float()
    lat_mask = editmask.grow(editmask.from_pixels(truth, x0.shape, model.temporal_factor), 1)
    fe = {"diffusers": lambda: pipeline.flow_edit(model, src, edit, x0, steps, 33, 0, 1, Guidance(3.5),
                                                  Guidance(13.5), 0),
          "native": lambda: native_flow_edit(pos_edit, 3.5, 13.5),
          "diffusers masked": lambda: pipeline.flow_edit(model, src, edit, x0, steps, 33, 0, 1, Guidance(3.5),
                                                         Guidance(13.5), 0, edit_mask=editmask.EditMask(
                                                             given=truth, grow=1)),
          "native masked": lambda: native_flow_edit(pos_edit, 3.5, 13.5, to_core(lat_mask))}
    fe_latents = {}
    outside = (lat_mask == 0).float()  # where the mask is exactly 0 (a soft edge blends)
    result["flowedit"] = {"rows": edit_rows({f"{k} flowedit": (lambda k=k, f=f: fe_latents.setdefault(k, f()))
                                             for k, f in fe.items()}, score, {"edit": "colour", "guidance": 13.5}),
                          "agreement": rel(fe_latents["native"], fe_latents["diffusers"]),
                          "masked_agreement": rel(fe_latents["native masked"], fe_latents["diffusers masked"]),
                          "masked_outside_vs_source": rel(fe_latents["native masked"] * outside, x0 * outside),
                          "mask_fraction": float(lat_mask.mean()),
                          "native_source_both_sides_vs_source": rel(native_flow_edit(pos, 3.5, 3.5), x0)}
    print(json.dumps({"flowedit": {k: v for k, v in result["flowedit"].items() if k != "rows"}}), flush=True)
    if args.flowedit_only:
        result["wall_seconds"] = time.time() - t_start
        return result

    # -------------------------------------------------------------- round trips
    rows, trajs = {"diffusers": {}, "native": {}}, {}
    for cfg in (1.0, g):
        start = time.time()
        traj = pipeline.invert(model, src, x0, steps, Guidance(cfg), Solver(iters=10, tol=1e-5))
        inv_s = time.time() - start
        out = pipeline.sample(model, src, traj.noise, steps, Guidance(cfg))
        errs = rel_err(out, x0)
        trajs["diffusers", cfg] = traj
        rows["diffusers"][f"{cfg:g}"] = {"rel_err": float(np.mean(errs)), "rel_err_max": float(np.max(errs)),
                                        "calls_per_step": sum(traj.calls) / steps, "first_step_calls": traj.calls[0],
                                        "invert_seconds": inv_s, "seconds": time.time() - start}
        print(json.dumps({"round trip": "diffusers", "guidance": cfg, **rows["diffusers"][f"{cfg:g}"]}), flush=True)

        start, forwards[0] = time.time(), 0
        with torch.inference_mode():
            ntraj, noise = Invert().invert(mp, pos, neg, cfg, sigmas.clone(), latent, 10, 1e-5, "anderson", 0.0,
                                           "fp32")["result"]
        inv_s, inv_forwards = time.time() - start, forwards[0]
        with torch.inference_mode():
            start_noise = noise.generate_noise(latent)
        out = core_sample(mp, pos, cfg, start_noise)
        errs = rel_err(out, x0)
        trajs["native", cfg] = (ntraj, noise)
        rows["native"][f"{cfg:g}"] = {"rel_err": float(np.mean(errs)), "rel_err_max": float(np.max(errs)),
                                     "calls_per_step": sum(ntraj.calls) / steps, "first_step_calls": ntraj.calls[0],
                                     "forwards_per_step": inv_forwards / steps, "invert_seconds": inv_s,
                                     "seconds": time.time() - start,
                                     "traj_clean_vs_x0": rel(ntraj.clean, x0),
                                     "x_T_vs_diffusers_x_T": rel(ntraj.noise, trajs["diffusers", cfg].noise)}
        print(json.dumps({"round trip": "native", "guidance": cfg, **rows["native"][f"{cfg:g}"]}), flush=True)
    result["round_trip"] = rows

    # -------------------------------------------------------------- guided reconstruction
    def guided(traj, cond, cfg):
        return pipeline.guided_sample(pipeline.with_reference(model, traj, ReferenceOptions()), cond, Guidance(cfg))

    def patched(cfg):
        with torch.inference_mode():
            return Patch().patch(mp, trajs["native", cfg][0], "all", 0.0, 1.0, 4.0, "all")["result"][0]

    def native_noise(cfg):
        with torch.inference_mode():
            return trajs["native", cfg][1].generate_noise(latent)

    recon_lat = {
        "diffusers": {"plain g1": pipeline.sample(model, src, trajs["diffusers", 1.0].noise, steps),
                      "ours default g1": guided(trajs["diffusers", 1.0], src, 1.0),
                      f"plain g{g:g}": pipeline.sample(model, src, trajs["diffusers", g].noise, steps, Guidance(g)),
                      f"ours default g{g:g}": guided(trajs["diffusers", g], src, g)},
        "native": {"plain g1": core_sample(mp, pos, 1.0, native_noise(1.0)),
                   "ours default g1": core_sample(patched(1.0), pos, 1.0, native_noise(1.0)),
                   f"plain g{g:g}": core_sample(mp, pos, g, native_noise(g)),
                   f"ours default g{g:g}": core_sample(patched(g), pos, g, native_noise(g))}}
    result["reconstruction"] = {}
    for path, lats in recon_lat.items():
        rec = reconstruction_rows({f"{path} {k}": v for k, v in lats.items()}, x0, recon, decode)
        for cfg in ("1", f"{g:g}"):
            rec[f"{path} ours default g{cfg}"]["vs_plain"] = rel(lats[f"ours default g{cfg}"], lats[f"plain g{cfg}"])
        result["reconstruction"][path] = {k[len(path) + 1:]: v for k, v in rec.items()}

    # -------------------------------------------------------------- colour edits
    methods = {
        "ground truth (VAE)": lambda: torch.cat([wan.encode_video(model, torch.from_numpy(synthetic.render(t)))
                                                 for t in targets]),
        "diffusers exact": lambda: pipeline.sample(model, edit, trajs["diffusers", 1.0].noise, steps, Guidance(g)),
        "diffusers ours default": lambda: guided(trajs["diffusers", 1.0], edit, g),
        "native exact": lambda: core_sample(mp, pos_edit, g, native_noise(1.0)),
        "native ours default": lambda: core_sample(patched(1.0), pos_edit, g, native_noise(1.0)),
    }
    latents = {}

    def keep(name, fn):
        def run_one():
            latents[name] = fn()
            return latents[name]
        return run_one

    result["edits"] = edit_rows({k: keep(k, f) for k, f in methods.items()}, score, {"edit": "colour", "guidance": g})
    result["edit_agreement"] = {  # how far the two paths' edits are apart (latent, relative)
        "exact": rel(latents["native exact"], latents["diffusers exact"]),
        "ours default": rel(latents["native ours default"], latents["diffusers ours default"])}
    print(json.dumps({"edit_agreement": result["edit_agreement"]}), flush=True)

    # -------------------------------------------------------------- cost
    guided_model = patched(1.0)
    counts = {}

    def counted(name, fn):
        def run_one():
            forwards[0] = 0
            out = fn()
            counts[name] = forwards[0] / steps
            return out
        return run_one

    result["speed"] = {"guidance": g, "repeats": args.repeats, "samplers": interleaved_timing({
        "plain": lambda: pipeline.sample(model, edit, trajs["diffusers", 1.0].noise, steps, Guidance(g)),
        "guided": lambda: guided(trajs["diffusers", 1.0], edit, g),
        "native plain": counted("native plain", lambda: core_sample(mp, pos_edit, g, native_noise(1.0))),
        "native guided": counted("native guided", lambda: core_sample(guided_model, pos_edit, g, native_noise(1.0))),
    }, args.repeats, {"guided": "plain", "native guided": "native plain"})}
    result["speed"]["core_forwards_per_step"] = counts
    result["wall_seconds"] = time.time() - t_start
    return result


# ----------------------------------------------------------------------------- the report

def markdown(result: dict, command: str) -> str:
    g = f"{result['guidance']:g}"
    c = result["checks"]
    out = [f"Command: `{command}`  ", f"Machine: {result['machine']}  ",
           f"Model: {result['model']}; {result['videos']} held-out videos, {result['steps']} steps, fp32; core "
           f"WanModel from the same weights ({result['core']['tensors']} tensors, "
           f"{result['core']['parameters']:,} parameters), {result['core']['model_sampling']} shift {result['shift']:g}. "
           f"Wall time {result['wall_seconds']:.0f} s.", "",
           "Equivalence checks:", ""]
    for e in c["model_output"]:
        out.append(f"- core WanModel vs diffusers transformer at sigma {e['sigma']:.4g}: velocity relative "
                   f"{e['velocity_rel']:.2e} (max abs {e['velocity_max_abs']:.2e}); core's denoised vs x - sigma v "
                   f"{e['denoised_rel']:.2e}")
    out.append(f"- latent hand-over: process_latent_in(process_latent_out(x)) vs x: relative {c['latent_in_out_rel']:.2e}, "
               f"max abs {c['latent_in_out_max_abs']:.2e}")
    out.append(f"- core `simple` sigmas vs the pack's flow grid: max abs difference "
               f"{c['simple_vs_pack_sigmas_max_abs']:.4f} (simple {c['simple_sigmas_head'][:3]} ... "
               f"{c['simple_sigmas_head'][3:]}, pack {c['pack_sigmas_head'][:3]} ... {c['pack_sigmas_head'][3:]}); "
               "core sampled on the pack's grid given as SIGMAS")
    for cfg, e in c["sampling_core_vs_pack"].items():
        out.append(f"- core euler (CFGGuider) vs the pack's Flow Sample from the same noise, guidance {cfg}: "
                   f"relative {e['rel']:.2e}, max abs {e['max_abs']:.2e}")
    fe = result["flowedit"]
    rows = {r["method"]: r for r in fe["rows"]}
    def fmt(r):
        return f"{r['target_acc']:.2f} / {r['direction_kept']:.2f} / {r['mask_iou']:.2f} / {r['centroid_err_px']:.2f}"

    out += ["", "| | diffusers path | native path (core) |", "|---|---|---|",
            f"| FlowEdit 33/0 3.5/13.5: hit / direction / IoU / path px | {fmt(rows['diffusers flowedit'])} | "
            f"{fmt(rows['native flowedit'])} |",
            f"| FlowEdit: the two paths' edits apart (relative latent) | {fe['agreement']:.2e} | |",
            f"| FlowEdit masked (true pixels grown 1 cell, {fe['mask_fraction']:.0%} of the latent): hit / direction "
            f"/ IoU / path px | {fmt(rows['diffusers masked flowedit'])} | {fmt(rows['native masked flowedit'])} |",
            f"| FlowEdit masked: the two paths' edits apart / native outside the mask vs the source (relative) | "
            f"{fe['masked_agreement']:.2e} | {fe['masked_outside_vs_source']:.2e} |",
            f"| FlowEdit, source prompt both sides (3.5 / 3.5): relative to the source latent | | "
            f"{fe['native_source_both_sides_vs_source']:.2e} |"]
    if "round_trip" not in result:
        return "\n".join(out) + "\n"
    out += ["", "| | diffusers path | native path (core) |", "|---|---|---|"]
    rt = result["round_trip"]
    for cfg in ("1", g):
        d, n = rt["diffusers"][cfg], rt["native"][cfg]
        out.append(f"| round trip g{cfg}: rel. error mean / max | {d['rel_err']:.2e} / {d['rel_err_max']:.2e} | "
                   f"{n['rel_err']:.2e} / {n['rel_err_max']:.2e} |")
        out.append(f"| round trip g{cfg}: model calls / step (first step) | {d['calls_per_step']:.2f} "
                   f"({d['first_step_calls']}) | {n['calls_per_step']:.2f} ({n['first_step_calls']}) |")
        out.append(f"| round trip g{cfg}: inversion seconds | {d['invert_seconds']:.1f} | {n['invert_seconds']:.1f} |")
    rec = result["reconstruction"]
    for cfg in ("1", g):
        d, n = rec["diffusers"][f"ours default g{cfg}"], rec["native"][f"ours default g{cfg}"]
        out.append(f"| guided recon. (g{cfg} trajectory, g{cfg}): rel. error vs source / vs plain | "
                   f"{d['rel_err']:.2e} / {d['vs_plain']:.2e} | {n['rel_err']:.2e} / {n['vs_plain']:.2e} |")
        out.append(f"| guided recon. g{cfg}: PSNR vs VAE recon (dB), path error (px) | {d['psnr_db']:.1f}, "
                   f"{d['centroid_err_px']:.2f} | {n['psnr_db']:.1f}, {n['centroid_err_px']:.2f} |")
    edits = {r["method"]: r for r in result["edits"]}
    for label, key in (("edit g" + g + ", no patch (exact)", "exact"), ("edit g" + g + ", ours default (patch)", "ours default")):
        d, n = edits[f"diffusers {key}"], edits[f"native {key}"]
        out.append(f"| {label}: hit / direction / IoU / path px | {fmt(d)} | {fmt(n)} |")
    sp = result["speed"]["samplers"]
    n = result["speed"]["repeats"]
    out.append(f"| sampling g{g}: plain s, guided s (wall, median of {n}) | {sp['plain']['seconds']:.2f}, "
               f"{sp['guided']['seconds']:.2f} | {sp['native plain']['seconds']:.2f}, {sp['native guided']['seconds']:.2f} |")
    out.append(f"| guided ÷ plain (wall; process CPU) | {sp['guided']['ratio_to_plain']:.2f}; "
               f"{sp['guided']['cpu_ratio_to_plain']:.2f} | {sp['native guided']['ratio_to_plain']:.2f}; "
               f"{sp['native guided']['cpu_ratio_to_plain']:.2f} |")
    gt = edits["ground truth (VAE)"]
    fc = result["speed"].get("core_forwards_per_step", {})
    out += ["", f"Ground truth (VAE) of the edits: hit {gt['target_acc']:.2f}, direction {gt['direction_kept']:.2f}, "
            f"IoU {gt['mask_iou']:.2f}, path {gt['centroid_err_px']:.2f} px. The two paths' edits differ by "
            f"{result['edit_agreement']['exact']:.2e} (exact) and {result['edit_agreement']['ours default']:.2e} "
            f"(ours default), relative latent. Core forward passes per step: inversion g1 "
            f"{rt['native']['1']['forwards_per_step']:.2f}, g{g} {rt['native'][g]['forwards_per_step']:.2f}; "
            f"sampling plain {fc.get('native plain', float('nan')):.2f}, guided {fc.get('native guided', float('nan')):.2f}."]
    return "\n".join(out) + "\n"


def default_comfyui() -> str:
    """$COMFYUI_PATH, else the host checkout `.host/comfyui` of this repo (or, in a git worktree, of
    the main working tree)."""
    if os.environ.get("COMFYUI_PATH"):
        return os.environ["COMFYUI_PATH"]
    candidates = [ROOT / ".host" / "comfyui"]
    common = ROOT / ".git"
    if common.is_file():  # a worktree: .git names <main>/.git/worktrees/<name>
        gitdir = Path(common.read_text().split("gitdir:", 1)[1].strip())
        candidates.append(gitdir.parents[2] / ".host" / "comfyui")
    return str(next((c for c in candidates if c.is_dir()), candidates[0]))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfyui", default=default_comfyui())
    p.add_argument("--model", default=str(ROOT / "assets" / "tiny-wan"))
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--flowedit-only", action="store_true", help="the checks and the FlowEdit part alone")
    args = p.parse_args(argv)
    args.model = str(Path(args.model).resolve())
    json_path = str(Path(args.json).resolve()) if args.json else None
    result = run(args)
    command = f"python tools/bench_native.py {' '.join(argv if argv is not None else sys.argv[1:])}".strip()
    print(markdown(result, command))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
