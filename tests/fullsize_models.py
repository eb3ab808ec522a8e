"""Random-weight transformers with the CogVideoX-2B and -5B architectures (public configs), inputs
of the right shapes, the samplers to compare, and the FLOP count of one sampling step of each.
Built on PyTorch's meta device they cost no memory and no arithmetic, so a test checks the cost
ordering of the samplers on a CPU (tests/unit/test_attention.py); tools/bench_fullsize.py times
the same models and samplers on a GPU.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from vidinv.family import Guidance
from vidinv import attention, ddim
from vidinv.models import cogvideox
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


def build(arch: str, device, dtype, smoke: bool) -> cogvideox.CogVideoX:
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
    """A random edit conditioning and a random trajectory of the right shapes for `steps` steps."""
    c = model.tcfg
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, int(c["max_text_seq_length"]), int(c["text_embed_dim"]), generator=g)
    edit = cogvideox.Conditioning("edit", "", torch.randn(text.shape, generator=g), torch.zeros_like(text),
                                  model.fingerprint)
    lat_f = (frames - 1) // model.temporal_factor + 1
    shape = (steps + 1, 1, lat_f, model.latent_channels, height // model.spatial_factor, width // model.spatial_factor)
    schedule = ddim.schedule_from_config(model.scheduler_config)
    traj = Trajectory(latents=torch.randn(shape, generator=g), timesteps=ddim.timesteps(schedule, steps),
                      scheduler_config=model.scheduler_config, model_fingerprint=model.fingerprint,
                      model_name=model.name, prompt="source", negative_prompt="", embeds=text,
                      negative_embeds=torch.zeros_like(text), guidance=1.0, dynamic_cfg=False, iterations=0,
                      tolerance=0.0, residuals=[0.0] * steps, calls=[1] * steps)
    return edit, traj


def samplers(model) -> dict:
    """name -> (ReferenceOptions or None for plain sampling, start, the trajectory's inversion
    guidance: a trajectory inverted under CFG gets a reference row per CFG row)."""
    opts = attention.ReferenceOptions
    return {
        "plain": (None, "inverted", 1.0),
        "guided (defaults: every block and step)": (opts(), "inverted", 1.0),
        "guided, steps from 30 %": (opts(start=0.3), "inverted", 1.0),
        "guided, first half of the steps": (opts(end=0.5), "inverted", 1.0),
        "guided, blocks of the first half": (opts(blocks=f"-{int(model.tcfg['num_layers']) // 2}"), "inverted", 1.0),
        "guided, trajectory inverted under CFG (reference per CFG row)": (opts(), "inverted", 6.0),
        "published recipe (reference per CFG row)": (opts(reference_text="edit", text=True, weight=1.0), "fresh", 1.0),
    }


def step_flops(model, edit, traj, guidance: float) -> dict:
    """FLOPs of one CFG sampling step per sampler, averaged over the trajectory's steps: the
    sample pass (CFG rows) plus, where the window is on, the reference pass."""
    from torch.utils.flop_counter import FlopCounterMode

    fam = cogvideox.FAMILY
    x = traj.noise
    text, _ = cogvideox.cfg_rows(edit, guidance, False, x.shape[0])
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
                        attention.installed(model.transformer, fam.reference_processors(model, layers)) as channel:
                    ctx = None if opts is None else attention.per_step(
                        channel, layers, source.latent_for_step, call, opts.weight, opts.rows, guidance > 1.0,
                        active.__contains__, opts.text)(i, x)
                    with ctx or contextlib.nullcontext():
                        cogvideox.transformer_call(model, torch.cat([x, x]), text, t, None)
                per_kind[i in active] = counter.get_total_flops()
        total = sum(per_kind[i in active] for i in range(traj.steps))
        out[name] = total / traj.steps
    return out
