"""Wan 2.x text-to-video in diffusers format: load a folder, encode text (UMT5), VAE encode/decode,
and the denoiser that the flow-matching Euler grid of `vidinv.flow` drives; `FAMILY` puts it behind
the model-family interface.

Every shape and setting is read from the folder's configs: latent channels (``z_dim``), the VAE's
spatial and temporal compression (``scale_factor_spatial`` / ``scale_factor_temporal``), the latent
normalisation (``latents_mean`` / ``latents_std``), the transformer's patch size, heads and layers,
the text width, the flow shift of the scheduler. Wan 2.1 T2V 1.3B and 14B and the bundled tiny
model take the same path (Wan 2.2 TI2V-5B used for text-to-video is single-transformer and should
too; nothing tests it yet). Refused with a message: image-to-video
folders (a transformer with image inputs, an ``image_encoder``) and Wan 2.2's two-expert folders
(``transformer_2`` with ``boundary_ratio``), which this version leaves for later.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
from pathlib import Path

import torch

from .. import errors, flow, solver, video
from ..family import Guidance
from . import loading, wan_attention
from .loading import check_tiled_size, dtype_kwarg, on_device, should_tile, vae_memory_mode

TRANSFORMER_CLASS = "WanTransformer3DModel"
SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
TEXT_LEN = 512  # WanPipeline's max_sequence_length: prompts are padded to it (its I2V attention assumes it)


# ----------------------------------------------------------------------------- folders

def is_model_folder(path) -> bool:
    """A folder counts when ``transformer/config.json`` names WanTransformer3DModel."""
    return loading.names_class(path, "transformer/config.json", TRANSFORMER_CLASS)


def find_model_folders(roots) -> dict[str, Path]:
    """Wan folders directly under each root, keyed by folder name (first root wins)."""
    return loading.find_model_folders(roots, is_model_folder)


def check_model_folder(path: Path) -> None:
    if not path.is_dir():
        raise errors.InputError(f"Wan model folder {str(path)!r} does not exist",
                                "Put a diffusers-format Wan folder under models/Wan/<name> or models/diffusers/<name>.")
    missing = [s for s in SUBFOLDERS if not (path / s).is_dir()]
    if missing:
        raise errors.InputError(
            f"{path.name!r} is not a complete diffusers Wan folder: missing {', '.join(missing)}",
            f"A Wan folder holds {', '.join(SUBFOLDERS)} and model_index.json; download the whole diffusers "
            "repository (for example Wan-AI/Wan2.1-T2V-1.3B-Diffusers), not only the transformer.")
    if not loading.readable_check(is_model_folder, path, "transformer/config.json"):
        raise errors.InputError(f"{path.name!r}: transformer/config.json does not name {TRANSFORMER_CLASS}",
                                "Choose a Wan model folder.")
    index = loading.read_json(path / "model_index.json") if (path / "model_index.json").is_file() else {}
    second = index.get("transformer_2")
    if (path / "transformer_2").is_dir() or (isinstance(second, list) and second[0] is not None):
        raise errors.InputError(
            f"{path.name!r} is a Wan 2.2 two-expert folder (a high-noise 'transformer' and a low-noise "
            f"'transformer_2' switched at boundary_ratio {index.get('boundary_ratio')!r}); this version of the pack "
            "inverts single-transformer Wan models only",
            "Use a single-transformer Wan folder (Wan 2.1 T2V 1.3B or 14B); two-expert support is planned.")
    tcfg = loading.read_json(path / "transformer" / "config.json")
    if tcfg.get("image_dim") or tcfg.get("added_kv_proj_dim") or (path / "image_encoder").is_dir():
        raise errors.InputError(
            f"{path.name!r} is a Wan image-to-video folder (image_dim {tcfg.get('image_dim')!r}, added_kv_proj_dim "
            f"{tcfg.get('added_kv_proj_dim')!r}); this version of the pack inverts Wan text-to-video models only",
            "Use a Wan text-to-video folder (Wan2.1-T2V-1.3B-Diffusers or -14B-Diffusers).")


# ----------------------------------------------------------------------------- the model value

@dataclasses.dataclass(eq=False)
class Wan:
    """Everything later stages need, and nothing global. `reference` is set only on the copies that
    the Reference Attention node returns (see `vidinv.attention`)."""
    name: str
    path: str
    transformer: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict
    dtype: torch.dtype
    device: torch.device
    offload_device: torch.device
    fingerprint: str
    reference: object = None
    family: str = "wan"

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.z_dim)

    @property
    def spatial_factor(self) -> int:
        return int(self.vae.config.scale_factor_spatial)

    @property
    def temporal_factor(self) -> int:
        return int(self.vae.config.scale_factor_temporal)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(int(p) for p in self.transformer.config.patch_size)

    @property
    def size_multiple(self) -> int:
        """Pixel sizes must be multiples of this (VAE compression x spatial patch size)."""
        return self.spatial_factor * max(self.patch_size[1:])

    @property
    def max_text_length(self) -> int:
        return TEXT_LEN

    @property
    def text_dim(self) -> int:
        return int(self.transformer.config.text_dim)

    @property
    def num_layers(self) -> int:
        return int(self.transformer.config.num_layers)

    @property
    def flow_shift(self) -> float:
        return flow.shift_of(self.scheduler_config)

    def describe(self) -> str:
        c = self.transformer.config
        return (f"{self.name}: Wan T2V, {c.num_layers} blocks, {c.num_attention_heads} heads x {c.attention_head_dim}, "
                f"{self.latent_channels} latent channels, patch {list(self.patch_size)}, VAE {self.spatial_factor}x/"
                f"{self.temporal_factor}x, flow shift {self.flow_shift:g}, {str(self.dtype).replace('torch.', '')}")


def fingerprint(path: Path, transformer) -> str:
    return loading.fingerprint([path / sub / name for sub in ("transformer", "scheduler", "vae")
                                for name in ("config.json", "scheduler_config.json")], transformer)


def load(path, dtype: str = "fp32", device=None, offload_device=None, name: str | None = None) -> Wan:
    """Load a diffusers Wan text-to-video folder. Modules rest on `offload_device` and move to
    `device` for the stage that uses them. `from_pretrained` of the transformer needs `accelerate`
    (DESIGN fact 10)."""
    path = Path(path)
    check_model_folder(path)
    flow.check_config(loading.read_json(path / "scheduler" / "scheduler_config.json"))
    torch_dtype = loading.check_dtype(dtype)
    if importlib.util.find_spec("accelerate") is None:  # diffusers loads Wan's fp32-kept modules only through it
        raise errors.InputError("loading a Wan transformer needs the 'accelerate' package, which is not installed",
                                "pip install accelerate (it is in the pack's requirements.txt).")
    import diffusers
    import transformers
    try:
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
    except ImportError as err:
        raise errors.InputError(f"diffusers {diffusers.__version__} has no Wan models (they came in 0.33)",
                                "pip install -U diffusers") from err
    from transformers import AutoTokenizer, UMT5EncoderModel
    device = torch.device(device or "cpu")
    offload_device = torch.device(offload_device or device)
    transformer = WanTransformer3DModel.from_pretrained(
        path / "transformer", **dtype_kwarg(diffusers.__version__, (0, 42), torch_dtype))
    vae = AutoencoderKLWan.from_pretrained(path / "vae", **dtype_kwarg(diffusers.__version__, (0, 42), torch_dtype))
    text_encoder = UMT5EncoderModel.from_pretrained(
        path / "text_encoder", **dtype_kwarg(transformers.__version__, (4, 56), torch_dtype))
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    scheduler_config = loading.read_json(path / "scheduler" / "scheduler_config.json")
    for m in (transformer, vae, text_encoder):
        m.eval().requires_grad_(False).to(offload_device)
    model = Wan(name or path.name, str(path), transformer, vae, text_encoder, tokenizer, scheduler_config,
                torch_dtype, device, offload_device, fingerprint(path, transformer))
    if int(transformer.config.in_channels) != model.latent_channels:
        raise errors.InputError(
            f"{model.name}: transformer in_channels {transformer.config.in_channels} differ from the VAE's "
            f"{model.latent_channels} latent channels", "The transformer and the VAE of this folder do not belong "
            "together (or it is an image-to-video model, which this version does not invert).")
    return model


# ----------------------------------------------------------------------------- text

@dataclasses.dataclass(eq=False)
class Conditioning:
    """A prompt and its negative, encoded for one Wan model: UMT5 with its attention mask, cut at each
    prompt's length and zero-padded to `TEXT_LEN`, as WanPipeline makes them."""
    prompt: str
    negative_prompt: str
    embeds: torch.Tensor  # [P, L, D] float32, CPU; P = 1 or one row per video
    negative_embeds: torch.Tensor  # [1, L, D]
    model_fingerprint: str
    truncated: tuple[str, ...] = ()


@torch.no_grad()
def encode_text(model: Wan, prompt: str | list[str], negative_prompt: str = "") -> Conditioning:
    """UMT5 embeddings as WanPipeline computes them (its prompt cleaning, the attention mask, zeros
    past each prompt's tokens). A list of prompts gives one row per prompt."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    texts = [prompt_clean(t) for t in prompts + [negative_prompt]]
    tok = model.tokenizer(texts, padding="max_length", max_length=TEXT_LEN, truncation=True, add_special_tokens=True,
                          return_attention_mask=True, return_tensors="pt")
    truncated = []
    for text in dict.fromkeys(texts):
        full = model.tokenizer(text, add_special_tokens=True).input_ids
        if len(full) > TEXT_LEN:
            truncated.append(model.tokenizer.decode(full[TEXT_LEN - 1:-1]))
    with on_device(model.text_encoder, model) as te:
        emb = te(tok.input_ids.to(model.device), tok.attention_mask.to(model.device)).last_hidden_state
    emb = emb.float().cpu() * tok.attention_mask[..., None].float()  # zeros past each prompt, as the pipeline pads
    label = prompt if isinstance(prompt, str) else " | ".join(prompts)
    return Conditioning(label, negative_prompt, emb[:-1], emb[-1:], model.fingerprint, tuple(truncated))


def check_conditioning(model: Wan, cond) -> None:
    if not isinstance(cond, Conditioning):
        raise errors.InputError(f"the conditioning is {type(cond).__name__}, not a Wan text conditioning",
                                "Encode the prompt with Encode Text (Wan) and the same model.")
    if cond.model_fingerprint != model.fingerprint:
        raise errors.InputError("the conditioning was encoded by another model's text encoder",
                                "Encode the prompt with the model you sample with.")


# ----------------------------------------------------------------------------- VAE

def latent_stats(model: Wan, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE config's per-channel mean and std, ``[1, C, 1, 1, 1]`` float32."""
    shape = (1, model.latent_channels, 1, 1, 1)
    mean = torch.tensor(model.vae.config.latents_mean, dtype=torch.float32).view(shape)
    std = torch.tensor(model.vae.config.latents_std, dtype=torch.float32).view(shape)
    return mean.to(device or "cpu"), std.to(device or "cpu")


@torch.no_grad()
def encode_video(model: Wan, frames: torch.Tensor, tiling: str = "auto") -> torch.Tensor:
    """IMAGE frames ``[N, H, W, 3]`` (0..1, N = 4k+1) -> normalised latent ``[1, F, C, h, w]`` float32
    (posterior mean, ``(z - latents_mean) / latents_std``, as the Wan pipelines normalise)."""
    n, h, w, _ = frames.shape
    x = frames.permute(3, 0, 1, 2).unsqueeze(0) * 2 - 1  # [1, 3, N, H, W]
    with on_device(model.vae, model) as vae, vae_memory_mode(vae, should_tile(model, h, w, tiling)):
        z = vae.encode(x.to(model.device, model.dtype)).latent_dist.mode()
    check_tiled_size(z.shape[-2:], (h // model.spatial_factor, w // model.spatial_factor), "a latent")
    mean, std = latent_stats(model)
    return ((z.float().cpu() - mean) / std).permute(0, 2, 1, 3, 4)


@torch.no_grad()
def decode_video(model: Wan, latents: torch.Tensor, tiling: str = "auto") -> torch.Tensor:
    """Latent ``[B, F, C, h, w]`` -> IMAGE frames ``[B*N, H, W, 3]`` float32 in 0..1, N = 4(F-1)+1."""
    if latents.dim() != 5 or latents.shape[2] != model.latent_channels:
        raise errors.InputError(f"latent of shape {tuple(latents.shape)} is not [B, F, {model.latent_channels}, H, W] "
                                f"for {model.name}'s VAE", "Decode with the model that made the latent.")
    h, w = latents.shape[-2] * model.spatial_factor, latents.shape[-1] * model.spatial_factor
    mean, std = latent_stats(model)
    out = []
    with on_device(model.vae, model) as vae, vae_memory_mode(vae, should_tile(model, h, w, tiling)):
        for z in latents:  # one video at a time
            z = (z.unsqueeze(0).permute(0, 2, 1, 3, 4).float() * std + mean).to(model.device, model.dtype)
            frames = vae.decode(z).sample  # [1, 3, N, H, W], clamped to -1..1 by the VAE
            check_tiled_size(frames.shape[-2:], (h, w), "frames")
            out.append(((frames.float().cpu()[0] + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0))
    return torch.cat(out)


# ----------------------------------------------------------------------------- denoiser

def cfg_rows(cond: Conditioning, use_cfg: bool, batch: int, negative: torch.Tensor | None = None) -> torch.Tensor:
    """Text rows of one call: [negative x B, positive x B] under CFG, else positive x B (`negative`
    overrides the conditioning's own: the 'source prompt' negative)."""
    if cond.embeds.shape[0] not in (1, batch):
        raise errors.InputError(f"{cond.embeds.shape[0]} prompts for a batch of {batch} latents",
                                "Give one prompt, or one per video.")
    pos = cond.embeds.expand(batch, -1, -1)
    if not use_cfg:
        return pos
    neg = cond.negative_embeds if negative is None else negative
    return torch.cat([neg.expand(batch, -1, -1) if neg.shape[0] == 1 else neg, pos])


def transformer_call(model: Wan, x: torch.Tensor, text: torch.Tensor, t: float) -> torch.Tensor:
    """One transformer evaluation on latent rows `x` ``[R, F, C, h, w]`` at model time `t` (1000 sigma)
    with text rows; returns the velocity ``[R, F, C, h, w]`` in float32 or wider, on the compute device."""
    rows = x.shape[0]
    inp = x.to(model.device, model.dtype).permute(0, 2, 1, 3, 4)  # the transformer's [B, C, F, H, W]
    timestep = torch.full((rows,), float(t), device=model.device, dtype=torch.float32)
    out = model.transformer(hidden_states=inp, timestep=timestep, encoder_hidden_states=text.to(model.device, model.dtype),
                            return_dict=False)[0]
    return out.permute(0, 2, 1, 3, 4).to(torch.promote_types(out.dtype, torch.float32))


def make_denoiser(model: Wan, cond: Conditioning, guidance: float, grid: solver.Grid, negative=None, attention=None):
    """``denoise(x, i)`` for step i of the flow grid: the CFG rows batched into one transformer call,
    combined ``u + s (c - u)``; the same callable serves sampling and inversion."""
    use_cfg = guidance > 1.0

    def denoise(x: torch.Tensor, i: int) -> torch.Tensor:
        t = grid.timesteps[i]
        text = cfg_rows(cond, use_cfg, x.shape[0], None if negative is None else negative(t))
        ctx = attention(i, x) if attention is not None else None
        with ctx or contextlib.nullcontext():
            out = transformer_call(model, torch.cat([x, x]) if use_cfg else x, text, t)
        if use_cfg:
            u, c = out.chunk(2)
            out = u + guidance * (c - u)
        return out.cpu()

    return denoise


def check_latent(model: Wan, latent: torch.Tensor) -> None:
    if latent.dim() != 5:
        raise errors.InputError(f"latent must be [B, F, C, H, W], got shape {tuple(latent.shape)}",
                                "Connect the output of this pack's VAE Encode node.")
    if latent.shape[2] != model.latent_channels:
        raise errors.InputError(f"latent has {latent.shape[2]} channels, {model.name} works on {model.latent_channels}",
                                "Encode the video with the same model's VAE.")
    p_t, p_h, p_w = model.patch_size
    if latent.shape[1] % p_t or latent.shape[-2] % p_h or latent.shape[-1] % p_w:
        raise errors.InputError(f"latent of {latent.shape[1]} frames, {latent.shape[-1]}x{latent.shape[-2]} does not "
                                f"divide into the transformer's patches {list(model.patch_size)}",
                                f"Resize the video to a multiple of {model.size_multiple} pixels before encoding.")


# ----------------------------------------------------------------------------- the family

class WanFamily:
    """Wan behind the model-family interface (`vidinv.family.Family`): flow-matching Euler on the
    shifted sigma grid, UMT5 text through cross-attention, the blocks' self-attention (3-D RoPE,
    image tokens only) for the reference."""
    name = "wan"
    display_name = "Wan"
    trajectory_version = 4  # 3 is taken by prompt-tuned files; older packs refuse Wan files
    text_conditioned = True
    grid_kind = flow.KIND
    solver_choice = True

    def network(self, model: Wan) -> torch.nn.Module:
        return model.transformer

    def encode_frames(self, model, images, frames, size, width, height, tiling):
        """4k+1 frames (the VAE's temporal factor), fitted to the size grid; 0 keeps the video's size,
        rounded down to a multiple the model takes."""
        clip, note_frames = video.fit_frame_count(images, model.temporal_factor, frames)
        m = model.size_multiple
        h, w = images.shape[1:3]
        clip, note_size = video.fit_size(clip, height or max(m, h // m * m), width or max(m, w // m * m), m, size)
        return encode_video(model, clip, tiling), None, 0, clip, f"{note_frames}; {note_size}"

    def encode_video(self, model, frames):
        return encode_video(model, frames)

    def decode(self, model, latents, tiling="auto"):
        return decode_video(model, latents, tiling)

    # -- sampling
    def grid(self, model, steps):
        return flow.sampler_grid(model.scheduler_config, steps)

    def grid_from_config(self, config, steps):
        return flow.sampler_grid(config, steps)

    def check_inputs(self, model, cond, latent, image_latents):
        check_latent(model, latent)
        check_conditioning(model, cond)
        if image_latents is not None:
            raise errors.InputError("the latent carries image-to-video conditioning, which Wan text-to-video does not "
                                    "take", "Encode the video with this Wan model's VAE.")

    def check_guidance(self, guidance):
        guidance.check_one_scale(self.display_name)
        if guidance.dynamic:
            raise errors.InputError("dynamic_cfg is CogVideoX's guidance schedule; Wan takes one scale",
                                    "Turn dynamic_cfg off for Wan.")

    def denoiser(self, model, cond, guidance, grid, image_latents=None, negative=None, attention=None, positive=None):
        if positive is not None:
            raise errors.InputError("prompt tuning is CogVideoX's; a Wan trajectory carries no tuned embeddings",
                                    "Set tuned_eta to 1 for Wan.")
        return make_denoiser(model, cond, guidance.scale, grid, negative, attention)

    # -- trajectories
    def trajectory_fields(self, model, cond, guidance, grid, image_latents):
        return dict(prompt=cond.prompt, negative_prompt=cond.negative_prompt, embeds=cond.embeds,
                    negative_embeds=cond.negative_embeds, guidance=float(guidance.scale), dynamic_cfg=False)

    def trajectory_guidance(self, traj):
        return Guidance(traj.guidance)

    def source_conditioning(self, traj):
        return Conditioning(traj.prompt, traj.negative_prompt, traj.embeds, traj.negative_embeds,
                            traj.model_fingerprint)

    def edit_conditioning(self, model, traj, cond):
        if cond is None:
            raise errors.InputError("Wan's guided sampling needs a conditioning",
                                    "Connect Encode Text (Wan) with the edited prompt.")
        return cond

    def check_trajectory_grid(self, traj, grid, config):
        """Step count and sigmas (to float32 rounding); returns the trajectory's own grid."""
        if grid.steps != traj.steps:
            raise errors.InputError(f"the trajectory has {traj.steps} steps, the grid given has {grid.steps}",
                                    "Sample with the trajectory's own step count.")
        for k, (a, b) in enumerate(zip(traj.sigmas, grid.sigmas)):
            if not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9):
                raise errors.InputError(
                    f"the trajectory's {traj.steps}-step grid does not match the model's: sigma at step {k} is "
                    f"{a:.9g} in the trajectory, {b:.9g} for the model (flow shift "
                    f"{traj.scheduler_config.get('shift', traj.scheduler_config.get('flow_shift'))!r} at inversion)",
                    "The scheduler config differs from the one used at inversion; invert again with this model.")
        return flow.steps_grid(traj.sigmas, traj.timesteps)

    def check_trajectory(self, traj, model, refuse):
        traj.check_embeds(getattr(model, "max_text_length", None), getattr(model, "text_dim", None), refuse)
        patch = getattr(model, "patch_size", None)
        lat = traj.latents
        if patch is not None and (lat.shape[2] % patch[0] or lat.shape[-2] % patch[1] or lat.shape[-1] % patch[2]):
            refuse(f"latents of {lat.shape[2]} frames, {lat.shape[-1]}x{lat.shape[-2]} do not divide into the "
                   f"model's patches {list(patch)}")

    def validate_trajectory(self, traj, refuse):
        sig = traj.sigmas
        if sig is None or len(sig) != len(traj.timesteps) + 1:
            refuse(f"a Wan trajectory needs {len(traj.timesteps) + 1} sigmas (one per latent), "
                   f"got {'none' if sig is None else len(sig)}")
        if any(not a > b for a, b in zip(sig, sig[1:])) or sig[-1] != 0 or sig[0] > 1:
            refuse(f"the sigmas {sig[:2]}...{sig[-2:]} do not fall from at most 1 to 0")
        if traj.image_latents is not None:
            refuse("a Wan text-to-video trajectory carries no image latents")

    def trajectory_summary(self, traj):
        return dict(sigma_max=traj.sigmas[0], sigma_min=min(s for s in traj.sigmas if s > 0),
                    flow_shift=traj.scheduler_config.get("shift", traj.scheduler_config.get("flow_shift")))

    def step_place(self, traj, i):
        return f"sigma {traj.sigmas[i]:.4g}"

    def latent_extras(self, traj):
        return None, 0

    def first_frame_latents(self, model, traj, first_frame):
        if first_frame is not None:
            raise errors.InputError(f"{model.name} is a text-to-video model: it takes no first frame",
                                    "Disconnect first_frame.")
        return None

    # -- reference attention
    def reference_options(self, options):
        if options.temporal:
            raise errors.InputError("'temporal' applies to Stable Video Diffusion only (Wan's self-attention is "
                                    "already spatio-temporal)", "Turn 'temporal' off for Wan.")
        if options.text:
            raise errors.InputError("reference 'text' does not apply to Wan: text enters through cross-attention, so "
                                    "its self-attention holds image tokens only", "Turn reference_text off for Wan.")
        return options

    def check_reference(self, model, options):
        options.validate(model.num_layers)

    def reference_layers(self, model, options):
        return options.block_indices(model.num_layers)

    def reference_processors(self, model, layers):
        return wan_attention.processors(model.transformer, layers)

    def reference_call(self, model, traj, grid, cond, guidance, options, per_cfg_row, negative, positive=None):
        """The reference pass: the trajectory latent through the same transformer with the source prompt,
        one row per video, or, with `per_cfg_row`, [source negative x B, source prompt x B]; with
        reference_conditioning "edit" (the published recipe) the prompts being sampled, per CFG row."""
        def call(ref: torch.Tensor, i: int):
            t, b = grid.timesteps[i], ref.shape[0]
            if options.reference_text == "source":
                text = cfg_rows(self.source_conditioning(traj), per_cfg_row, b)
            else:
                text = cfg_rows(cond, guidance.uses_cfg, b, None if negative is None else negative(t))
            return transformer_call(model, ref.repeat(text.shape[0] // b, 1, 1, 1, 1), text, t)
        return call


FAMILY = WanFamily()
