"""Random-weight transformers with the CogVideoX-2B and -5B and the Wan 2.1 1.3B and 14B
architectures (public configs), inputs of the right shapes, the samplers to compare, and the FLOP
count of one sampling step of each.
Built on PyTorch's meta device they cost no memory and no arithmetic, so a test checks the cost
ordering of the samplers on a CPU (tests/unit/test_attention.py); tools/bench_fullsize.py times
the same models and samplers on a GPU.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from vidinv.family import Guidance
from vidinv import attention, families
from vidinv.models import cogvideox, wan
from vidinv.trajectory import Trajectory

SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 rescale_betas_zero_snr=True, timestep_spacing="trailing", set_alpha_to_one=True,
                 prediction_type="v_prediction", clip_sample=False, steps_offset=0)
ARCHS = {  # transformer config, scheduler shift
    "2b": (dict(num_attention_heads=30, num_layers=30, use_rotary_positional_embeddings=False), 3.0),
    "5b": (dict(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True), 1.0),
}
COMMON = dict(attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512, text_embed_dim=4096,
              max_text_seq_length=226, sample_width=90, sample_height=60, sample_frames=49, patch_size=2)
SMOKE = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, time_embed_dim=32, text_embed_dim=24,
             max_text_seq_length=12, sample_width=8, sample_height=8, sample_frames=9)


# Wan 2.1 T2V: transformer configs of Wan-AI/Wan2.1-T2V-1.3B-Diffusers and -14B-Diffusers, flow shift
WAN_ARCHS = {
    "wan-1.3b": (dict(num_attention_heads=12, ffn_dim=8960, num_layers=30), 3.0),
    "wan-14b": (dict(num_attention_heads=40, ffn_dim=13824, num_layers=40), 5.0),
}
WAN_COMMON = dict(patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
                  freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
WAN_SMOKE = dict(num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=2, text_dim=24, freq_dim=16)


def build_wan(arch: str, device, dtype, smoke: bool) -> wan.Wan:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    over, shift = WAN_ARCHS[arch]
    cfg = {**WAN_COMMON, **over, **(WAN_SMOKE if smoke else {})}
    torch.manual_seed(0)
    with torch.device(device):
        transformer = WanTransformer3DModel(**cfg).to(dtype).eval().requires_grad_(False)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1])  # only its config is read (latent size)
    params = sum(p.numel() for p in transformer.parameters())
    return wan.Wan(f"random Wan 2.1 {arch[4:].upper()} ({params / 1e9:.2f} B parameters)", "", transformer, vae, None,
                   None, {"num_train_timesteps": 1000, "shift": shift}, dtype, torch.device(device),
                   torch.device(device), f"bench-{arch}")


def build(arch: str, device, dtype, smoke: bool):
    if arch in WAN_ARCHS:
        return build_wan(arch, device, dtype, smoke)
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    over, shift = ARCHS[arch]
    cfg = {**COMMON, **over, **(SMOKE if smoke else {})}
    torch.manual_seed(0)
    with torch.device(device):
        transformer = CogVideoXTransformer3DModel(**cfg).to(dtype).eval().requires_grad_(False)
    vae = AutoencoderKLCogVideoX(block_out_channels=[8, 8, 8, 8], layers_per_block=1, latent_channels=16,
                                 norm_num_groups=4)  # only its config is read (latent size)
    params = sum(p.numel() for p in transformer.parameters())
    return cogvideox.CogVideoX(f"random CogVideoX-{arch.upper()} ({params / 1e9:.2f} B parameters)", "", transformer,
                               vae, None, None, {**SCHEDULER, "snr_shift_scale": shift}, dtype, torch.device(device),
                               torch.device(device), f"bench-{arch}")


def inputs(model, frames: int, height: int, width: int, steps: int):
    """A random edit conditioning and a random trajectory of the right shapes for `steps` steps
    (a text family's: CogVideoX or Wan)."""
    fam = families.of(model)
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, model.max_text_length, model.text_dim, generator=g)
    lat_f = (frames - 1) // model.temporal_factor + 1
    shape = (steps + 1, 1, lat_f, model.latent_channels, height // model.spatial_factor, width // model.spatial_factor)
    grid = fam.grid(model, steps)
    traj = Trajectory(latents=torch.randn(shape, generator=g), timesteps=list(grid.timesteps),
                      scheduler_config=model.scheduler_config, model_fingerprint=model.fingerprint,
                      model_name=model.name, prompt="source", negative_prompt="", embeds=text,
                      negative_embeds=torch.zeros_like(text), guidance=1.0, dynamic_cfg=False, iterations=0,
                      tolerance=0.0, residuals=[0.0] * steps, calls=[1] * steps, family=fam.name,
                      sigmas=None if grid.sigmas is None else list(grid.sigmas))
    edit = fam.source_conditioning(dataclasses.replace(traj, embeds=torch.randn(text.shape, generator=g)))
    return edit, traj


def samplers(model) -> dict:
    """name -> (ReferenceOptions or None for plain sampling, start, the trajectory's inversion
    guidance: a trajectory inverted under CFG gets a reference row per CFG row)."""
    opts = attention.ReferenceOptions
    layers = int(families.of(model).networks(model)[0].config.num_layers)
    text = families.of(model).name == "cogvideox"  # the published recipe injects the text tokens where there are any
    return {
        "plain": (None, "inverted", 1.0),
        "guided (defaults: every block and step)": (opts(), "inverted", 1.0),
        "guided, steps from 30 %": (opts(start=0.3), "inverted", 1.0),
        "guided, first half of the steps": (opts(end=0.5), "inverted", 1.0),
        "guided, blocks of the first half": (opts(blocks=f"-{layers // 2}"), "inverted", 1.0),
        "guided, trajectory inverted under CFG (reference per CFG row)": (opts(), "inverted", 6.0),
        "published recipe (reference per CFG row)": (opts(reference_text="edit", text=text, weight=1.0), "fresh", 1.0),
    }


# one CFG network call of a text family on any device (its denoiser returns CPU tensors: not on meta)
NETWORK_CALLS = {
    "cogvideox": {"rows": lambda edit, g, b: cogvideox.cfg_rows(edit, g, False, b)[0],
                  "call": lambda model, x, text, t: cogvideox.transformer_call(model, x, text, t, None)},
    "wan": {"rows": lambda edit, g, b: wan.cfg_rows(edit, g > 1.0, b), "call": wan.transformer_call},
}


def step_flops(model, edit, traj, guidance: float) -> dict:
    """FLOPs of one CFG sampling step per sampler, averaged over the trajectory's steps: the
    sample pass (CFG rows) plus, where the window is on, the reference pass."""
    from torch.utils.flop_counter import FlopCounterMode

    fam = families.of(model)
    x = traj.noise
    network_call = NETWORK_CALLS[fam.name]
    text = network_call["rows"](edit, guidance, x.shape[0])
    grid = fam.grid(model, traj.steps)
    out = {}
    for name, (opts, _, inverted_guidance) in samplers(model).items():
        source, active, layers, call = traj, set(), (), None
        if opts is not None:
            source = dataclasses.replace(traj, guidance=inverted_guidance)
            layers = fam.reference_layers(model, opts)
            active = set(opts.active_steps(traj.steps))
            per_cfg_row = attention.reference_per_cfg_row(guidance > 1.0, inverted_guidance > 1.0, opts.rows)
            call = fam.reference_call(model, source, grid, edit, Guidance(guidance), opts, per_cfg_row, None)
        per_kind = {}  # a step costs the same as any other with the window in the same state
        for i, t in enumerate(traj.timesteps):
            if (i in active) not in per_kind:
                with FlopCounterMode(display=False) as counter, \
                        attention.installed(fam.networks(model), fam.reference_processors(model, layers)) as channel:
                    ctx = None if opts is None else attention.per_step(
                        channel, layers, source.latent_for_step, call, opts.weight, opts.rows, guidance > 1.0,
                        active.__contains__, opts.text)(i, x)
                    with ctx or contextlib.nullcontext():
                        network_call["call"](model, torch.cat([x, x]) if guidance > 1.0 else x, text, t)
                per_kind[i in active] = counter.get_total_flops()
        total = sum(per_kind[i in active] for i in range(traj.steps))
        out[name] = total / traj.steps
    return out
