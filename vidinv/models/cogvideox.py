"""CogVideoX in diffusers format: load a folder, encode text, VAE encode/decode, and the
denoiser callable that the samplers of `vidinv.ddim` drive.

Every shape and setting is read from the folder's own configs (latent channels, spatial and
temporal compression, text length, patch sizes, RoPE, I2V channel concatenation, schedule),
so CogVideoX-2B, 5B, 5B-I2V, 1.5 and the bundled tiny model take the same path.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Callable, ContextManager

import torch

from .. import ddim, editmask, errors, solver, video
from ..family import MEASURED_RECIPES, EditRecipe, Guidance, check_scale
from . import cogvideox_attention, configcheck, loading
from .loading import check_tiled_size, dtype_kwarg, on_device, should_tile, vae_memory_mode
from .rope import rotary_table

TRANSFORMER_CLASS = "CogVideoXTransformer3DModel"
SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


# ----------------------------------------------------------------------------- folders

def is_model_folder(path) -> bool:
    """A folder counts when ``transformer/config.json`` names CogVideoXTransformer3DModel."""
    return loading.names_class(path, "transformer/config.json", TRANSFORMER_CLASS)


def find_model_folders(roots) -> dict[str, Path]:
    """CogVideoX folders directly under each root, keyed by folder name (first root wins)."""
    return loading.find_model_folders(roots, is_model_folder, check_model_folder)


skip_folder = loading.skip_folder  # the scan's once-per-folder log (tests clear its cache)


_c, _n, _F = configcheck.count, configcheck.number, configcheck.Field
TRANSFORMER_FIELDS = {  # diffusers' defaults where a key may be left out
    "num_attention_heads": _c(1, 1024, default=30), "attention_head_dim": _c(1, 4096, default=64),
    "in_channels": _c(1, 4096, default=16), "out_channels": _c(1, 4096, null=True, default=16),
    "time_embed_dim": _c(1, 65536, default=512), "ofs_embed_dim": _c(1, 65536, null=True),
    "text_embed_dim": _c(1, 65536, default=4096), "num_layers": _c(1, 1024, default=30),
    "sample_width": _c(1, 4096, default=90), "sample_height": _c(1, 4096, default=60),
    "sample_frames": _c(1, 4096, default=49), "patch_size": _c(1, 64, default=2),
    "patch_size_t": _c(1, 64, null=True, default=None), "temporal_compression_ratio": _c(1, 64, default=4),
    "max_text_seq_length": _c(1, 16384, default=226), "use_rotary_positional_embeddings": _F("bool", default=False),
    "use_learned_positional_embeddings": _F("bool", default=False), "norm_eps": _n(0, 1, positive=True),
    "spatial_interpolation_scale": _n(None, 1e4, positive=True), "temporal_interpolation_scale": _n(None, 1e4, positive=True),
}
VAE_FIELDS = {
    "in_channels": _c(1, 64, default=3), "out_channels": _c(1, 64, default=3), "latent_channels": _c(1, 1024, default=16),
    "block_out_channels": _F("ints", 1, 65536, default=[128, 256, 256, 512]), "layers_per_block": _c(1, 64),
    "norm_num_groups": _c(1, 4096), "temporal_compression_ratio": _n(1, 64), "scaling_factor": _n(None, 1e4, positive=True),
    "sample_height": _c(1, 1 << 16), "sample_width": _c(1, 1 << 16), "invert_scale_latents": _F("bool"),
}
SCHEDULER_FIELDS = {**configcheck.SCHEDULER_FIELDS, "snr_shift_scale": _n(None, 1e4, positive=True),
                    "beta_start": _n(0, 1), "beta_end": _n(0, 1), "steps_offset": _c(0, 100_000)}
POSITION_TABLE_LIMIT = 2 << 30  # bytes: 2B's table is 0.13 GiB; a config asking more is not a real model


def _promises(cfg: dict) -> list:
    out = []
    t = cfg.get("transformer/config.json")
    if t is not None:
        inner, p, pt = t["num_attention_heads"] * t["attention_head_dim"], t["patch_size"], t["patch_size_t"]
        embed = (inner, t["in_channels"], p, p) if pt is None else (inner, t["in_channels"] * p * p * pt)
        out += [configcheck.Blocks("transformer", "transformer_blocks.", t["num_layers"], "num_layers"),
                configcheck.Promise("transformer", "patch_embed.proj.weight", embed,
                                    "num_attention_heads x attention_head_dim, in_channels, patch_size, patch_size_t"),
                configcheck.Promise("transformer", "patch_embed.text_proj.weight", (inner, t["text_embed_dim"]),
                                    "text_embed_dim"),
                configcheck.Promise("transformer", "time_embedding.linear_1.weight", (t["time_embed_dim"], inner),
                                    "time_embed_dim"),
                configcheck.Promise("transformer", "proj_out.weight",
                                    ((t["out_channels"] or t["in_channels"]) * p * p * (pt or 1), inner),
                                    "out_channels x patch sizes")]
    v = cfg.get("vae/config.json")
    if v is not None:
        first, last = v["block_out_channels"][0], v["block_out_channels"][-1]
        out += [configcheck.Promise("vae", "encoder.conv_in.conv.weight", (first, v["in_channels"], 3, 3, 3),
                                    "block_out_channels, in_channels"),
                configcheck.Promise("vae", "decoder.conv_in.conv.weight", (last, v["latent_channels"], 3, 3, 3),
                                    "block_out_channels, latent_channels")]
    return out + configcheck.t5_promises(cfg.get("text_encoder/config.json", {}))


def rope_channels(head_dim: int) -> tuple[int, int, int]:
    """The channels of a head that diffusers' 3-D RoPE gives time, height and width."""
    return head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3


def rope_fits(head_dim: int) -> bool:
    """Whether a head of this width carries CogVideoX's 3-D RoPE: each part's channels come in pairs."""
    return not any(c % 2 for c in rope_channels(head_dim))


def _cross_checks(cfg: dict, refuse) -> None:
    t = cfg.get("transformer/config.json")
    if t is None:
        return
    tokens = ((t["sample_frames"] - 1) // t["temporal_compression_ratio"] + 1) * \
        (t["sample_height"] // t["patch_size"]) * (t["sample_width"] // t["patch_size"]) + t["max_text_seq_length"]
    size = tokens * t["num_attention_heads"] * t["attention_head_dim"] * 4
    table = not t["use_rotary_positional_embeddings"] or t["use_learned_positional_embeddings"]  # as diffusers
    if table and size > POSITION_TABLE_LIMIT:
        refuse(f"transformer/config.json: sample_frames {t['sample_frames']} x sample_height {t['sample_height']} x "
               f"sample_width {t['sample_width']} make a position table of {size / 2**30:.1f} GiB "
               f"(more than {POSITION_TABLE_LIMIT / 2**30:.0f} GiB; CogVideoX-2B's is 0.13 GiB)")
    d = t["attention_head_dim"]
    if t["use_rotary_positional_embeddings"] and not rope_fits(d):
        time_, height, width = rope_channels(d)
        refuse(f"transformer/config.json: attention_head_dim {d} cannot carry CogVideoX's 3-D RoPE (its time, "
               f"height and width parts, {time_}, {height} and {width} channels, must be even: a multiple "
               "of 16 is; CogVideoX-5B's is 64)")
    text = cfg.get("text_encoder/config.json", {}).get("d_model")
    if text is not None and text != t["text_embed_dim"]:
        refuse(f"transformer/config.json: text_embed_dim {t['text_embed_dim']} differs from the text encoder's "
               f"d_model {text}")


SPEC = configcheck.Spec(
    files={"model_index.json": {}, "transformer/config.json": TRANSFORMER_FIELDS, "vae/config.json": VAE_FIELDS,
           "text_encoder/config.json": configcheck.T5_FIELDS, "scheduler/scheduler_config.json": SCHEDULER_FIELDS},
    promises=_promises, extra=_cross_checks)


def check_model_folder(path: Path) -> None:
    if not path.is_dir():
        raise errors.InputError(f"CogVideoX model folder {str(path)!r} does not exist",
                                "Put a diffusers-format CogVideoX folder under models/CogVideo/<name>.")
    missing = [s for s in SUBFOLDERS if not (path / s).is_dir()]
    if missing:
        raise errors.InputError(
            f"{path.name!r} is not a complete diffusers CogVideoX folder: missing {', '.join(missing)}",
            f"A CogVideoX folder holds {', '.join(SUBFOLDERS)} and model_index.json; download the whole "
            "repository (for example THUDM/CogVideoX-2b), not only the transformer.")
    if not loading.readable_check(is_model_folder, path, "transformer/config.json"):
        raise errors.InputError(f"{path.name!r}: transformer/config.json does not name {TRANSFORMER_CLASS}",
                                "Choose a CogVideoX model folder.")
    configs = configcheck.check_configs(path, SPEC)  # every field's type and range first
    configcheck.check_weights(path, SPEC, configs)  # then the sizes against the weights' headers


# ----------------------------------------------------------------------------- the model value

@dataclasses.dataclass(eq=False)
class CogVideoX:
    """Everything later stages need, and nothing global. `reference` is set only on the
    copies that the Reference Attention node returns (see `vidinv.attention`)."""
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
    family: str = "cogvideox"

    # -- read from the configs, never assumed
    @property
    def tcfg(self) -> dict:
        return dict(self.transformer.config)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def is_i2v(self) -> bool:
        """5B-I2V concatenates the image latent on channels: in_channels = 2 x latent channels."""
        return int(self.transformer.config.in_channels) == 2 * self.latent_channels

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def temporal_factor(self) -> int:
        return int(self.vae.config.temporal_compression_ratio)

    @property
    def patch_size(self) -> int:
        return int(self.transformer.config.patch_size)

    @property
    def patch_size_t(self) -> int | None:
        return self.transformer.config.patch_size_t

    @property
    def max_text_length(self) -> int:
        return int(self.transformer.config.max_text_seq_length)

    @property
    def text_dim(self) -> int:
        """Width of the text embeddings the transformer takes (T5's d_model)."""
        return int(self.transformer.config.text_embed_dim)

    @property
    def size_multiple(self) -> int:
        """Pixel sizes must be multiples of this (VAE compression x patch size)."""
        return self.spatial_factor * self.patch_size

    @property
    def native_size(self) -> tuple[int, int]:
        """(height, width) in pixels that the transformer was configured for."""
        c = self.transformer.config
        return int(c.sample_height) * self.spatial_factor, int(c.sample_width) * self.spatial_factor

    @property
    def required_size(self) -> tuple[int, int] | None:
        """The only (height, width) a model with learned position embeddings (5B-I2V) takes."""
        return self.native_size if self.tcfg.get("use_learned_positional_embeddings") else None

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def describe(self) -> str:
        rope = "RoPE" if self.tcfg.get("use_rotary_positional_embeddings") else "absolute positions"
        kind = "I2V" if self.is_i2v else "T2V"
        h, w = self.native_size
        return (f"{self.name}: {kind}, {rope}, {self.latent_channels} latent channels, native {w}x{h}, "
                f"text {self.max_text_length} tokens, snr_shift_scale "
                f"{self.scheduler_config.get('snr_shift_scale', 1.0)}, {str(self.dtype).replace('torch.', '')}")


def fingerprint(path: Path, transformer) -> str:
    """Identifies a model cheaply: its configs and a few bytes of a few weights."""
    return loading.fingerprint([path / sub / name for sub in ("transformer", "scheduler", "vae")
                                for name in ("config.json", "scheduler_config.json")], transformer)


@loading.outside_inference_mode
def load(path, dtype: str = "fp32", device=None, offload_device=None, name: str | None = None) -> CogVideoX:
    """Load a diffusers CogVideoX folder. Modules rest on `offload_device` and move to `device`
    for the stage that uses them (see `on_device`)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import AutoTokenizer, T5EncoderModel

    path = Path(path)
    check_model_folder(path)
    torch_dtype = loading.check_dtype(dtype)
    device = torch.device(device or "cpu")
    offload_device = torch.device(offload_device or device)
    import diffusers
    import transformers
    transformer = CogVideoXTransformer3DModel.from_pretrained(
        path / "transformer", **dtype_kwarg(diffusers.__version__, (0, 42), torch_dtype))
    vae = AutoencoderKLCogVideoX.from_pretrained(path / "vae", **dtype_kwarg(diffusers.__version__, (0, 42), torch_dtype))
    text_encoder = T5EncoderModel.from_pretrained(
        path / "text_encoder", **dtype_kwarg(transformers.__version__, (4, 56), torch_dtype))
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    sched = path / "scheduler" / "scheduler_config.json"
    scheduler_config = loading.read_json(sched)
    for m in (transformer, vae, text_encoder):
        m.eval().requires_grad_(False).to(offload_device)
    model = CogVideoX(name or path.name, str(path), transformer, vae, text_encoder, tokenizer, scheduler_config,
                      torch_dtype, device, offload_device, fingerprint(path, transformer))
    if model.is_i2v is False and int(transformer.config.in_channels) != model.latent_channels:
        raise errors.InputError(
            f"{model.name}: transformer in_channels {transformer.config.in_channels} matches neither the VAE's "
            f"{model.latent_channels} latent channels (text-to-video) nor twice that (image-to-video)",
            "The transformer and the VAE of this folder do not belong together.")
    return model


# ----------------------------------------------------------------------------- text

@dataclasses.dataclass(eq=False)
class Conditioning:
    """A prompt and its negative, encoded for one model (T5, padded to the model's length)."""
    prompt: str
    negative_prompt: str
    embeds: torch.Tensor  # [P, L, D] float32, CPU; P = 1 or one row per video
    negative_embeds: torch.Tensor  # [1, L, D]
    model_fingerprint: str
    truncated: tuple[str, ...] = ()  # text cut from the prompt / negative, if any


@torch.no_grad()
def encode_text(model: CogVideoX, prompt: str | list[str], negative_prompt: str = "") -> Conditioning:
    """T5 embeddings padded to ``max_text_seq_length``, as the CogVideoX pipeline makes them
    (no attention mask). A list of prompts gives one row per prompt (a batch of videos).
    Text past the limit is cut and reported in ``truncated``."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    n = model.max_text_length
    tok = model.tokenizer
    texts = prompts + [negative_prompt]
    ids = tok(texts, padding="max_length", max_length=n, truncation=True, add_special_tokens=True,
              return_tensors="pt").input_ids
    truncated = []
    for text in dict.fromkeys(texts):
        full = tok(text, add_special_tokens=True).input_ids
        if len(full) > n:
            truncated.append(tok.decode(full[n - 1:-1]))
    with on_device(model.text_encoder, model) as te:
        emb = te(ids.to(model.device))[0].float().cpu()
    label = prompt if isinstance(prompt, str) else " | ".join(prompts)
    return Conditioning(label, negative_prompt, emb[:-1], emb[-1:], model.fingerprint, tuple(truncated))


# ----------------------------------------------------------------------------- VAE

@torch.no_grad()
def encode_video(model: CogVideoX, frames: torch.Tensor, tiling: str = "auto",
                 sample: bool = False, seed: int = 0) -> torch.Tensor:
    """IMAGE frames ``[N, H, W, 3]`` (0..1, N = 4k+1, H and W fitting the model) -> latent
    ``[1, F, C, h, w]`` float32, scaled by the VAE's scaling factor. The posterior mean is used
    unless `sample` (then drawn with `seed`)."""
    n, h, w, _ = frames.shape
    loading.require_vae_memory(model, n, h, w, should_tile(model, h, w, tiling), "VAE-encoding")
    x = frames.permute(3, 0, 1, 2).unsqueeze(0) * 2 - 1  # [1, 3, N, H, W] in -1..1
    with on_device(model.vae, model) as vae, vae_memory_mode(vae, should_tile(model, h, w, tiling)):
        dist = vae.encode(x.to(model.device, model.dtype)).latent_dist
        if sample:
            g = torch.Generator(device=model.device).manual_seed(seed)
            z = dist.sample(generator=g)
        else:
            z = dist.mode()
    check_tiled_size(z.shape[-2:], (h // model.spatial_factor, w // model.spatial_factor), "a latent")
    z = z.float().cpu().permute(0, 2, 1, 3, 4)  # [1, F, C, h, w]
    return scale_latents(model, z)


def pad_latent_frames(model: CogVideoX, z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """CogVideoX 1.5 patches time in pairs (``patch_size_t``): repeat the first latent frame in
    front until the frame count divides, as its pipelines do. Returns (latent, frames added)."""
    p_t = model.patch_size_t or 1
    pad = (-z.shape[1]) % p_t
    return (torch.cat([z[:, :1].expand(-1, pad, -1, -1, -1), z], dim=1) if pad else z), pad


@torch.no_grad()
def encode_image_latents(model: CogVideoX, first_frame: torch.Tensor, latent_frames: int,
                         tiling: str = "auto") -> torch.Tensor:
    """I2V conditioning as the diffusers I2V pipeline builds it: the first frame encoded alone
    (posterior mean), scaled, then zero latent frames up to the video's latent length."""
    z = encode_video(model, first_frame[:1], tiling)  # [1, 1, C, h, w]
    pad = torch.zeros(z.shape[0], latent_frames - 1, *z.shape[2:])
    return torch.cat([z, pad], dim=1)


def scale_latents(model: CogVideoX, z: torch.Tensor) -> torch.Tensor:
    invert = model.vae.config.get("invert_scale_latents", False)
    return z / model.scaling_factor if invert else z * model.scaling_factor


def unscale_latents(model: CogVideoX, z: torch.Tensor) -> torch.Tensor:
    invert = model.vae.config.get("invert_scale_latents", False)
    return z * model.scaling_factor if invert else z / model.scaling_factor


def frames_for_latents(model: CogVideoX, latent_frames: int) -> int:
    """The frame count that encodes to `latent_frames`: the first latent frame holds the first video
    frame alone, every later one `temporal_factor` frames (4k+1 -> k+1)."""
    return (latent_frames - 1) * model.temporal_factor + 1


def decodable(z: torch.Tensor) -> torch.Tensor:
    """`z` (``[B, C, F, h, w]``, the VAE's layout) with a latent count the VAE decodes as it encodes.

    `AutoencoderKLCogVideoX._decode` runs its causal decoder on chunks of two latent frames, the odd
    remainder going to the first chunk, with the convolution cache carried between chunks. Its temporal
    upsampler keeps the first frame of a chunk single only when the chunk's length is odd (and above 1),
    so an odd count decodes to 4k+1 frames, latent 0 to the one frame it encodes, while an even count
    (5 or 13 frames encode to 2 or 4 latents) doubles latent 0 like every other and comes back as 4k+4
    frames, all of them shifted and mixed with a spurious leading group. Repeating the last latent frame
    makes the count odd: every chunk before the last is then the chunk diffusers decodes for the odd
    prefix (the decoder is causal, so those frames are exactly its frames), and the last chunk is that
    latent twice, whose group-norm statistics are its own. The repeat's frames are cut by the caller."""
    return torch.cat([z, z[:, :, -1:]], dim=2) if z.shape[2] % 2 == 0 else z


@torch.no_grad()
def decode_video(model: CogVideoX, latents: torch.Tensor, tiling: str = "auto") -> torch.Tensor:
    """Latent ``[B, F, C, h, w]`` -> IMAGE frames ``[B*N, H, W, 3]`` float32 in 0..1, N = 4(F-1)+1:
    the count the video was encoded from, for an even F too (see `decodable`)."""
    if latents.dim() != 5 or latents.shape[2] != model.latent_channels:
        raise errors.InputError(
            f"latent of shape {tuple(latents.shape)} is not [B, F, {model.latent_channels}, H, W] for "
            f"{model.name}'s VAE",
            "Decode with the model that made the latent.")
    h, w = latents.shape[-2] * model.spatial_factor, latents.shape[-1] * model.spatial_factor
    loading.require_vae_memory(model, latents.shape[0] * frames_for_latents(model, latents.shape[1]), h, w,
                               should_tile(model, h, w, tiling), "VAE-decoding")
    out = []
    with on_device(model.vae, model) as vae, vae_memory_mode(vae, should_tile(model, h, w, tiling)):
        for z in latents:  # one video at a time keeps peak memory at one video
            z = unscale_latents(model, z.unsqueeze(0)).permute(0, 2, 1, 3, 4)
            n = frames_for_latents(model, z.shape[2])
            video = vae.decode(decodable(z).to(model.device, model.dtype)).sample[:, :, :n]  # [1, 3, N, H, W]
            check_tiled_size(video.shape[-2:], (h, w), "frames")
            out.append(((video.float().cpu()[0] + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0))
    return torch.cat(out)


# ----------------------------------------------------------------------------- denoiser

def dynamic_guidance(scale: float, t: int, steps: int) -> float:
    """CogVideoX's dynamic CFG exactly as the diffusers pipeline computes it (a function of the
    timestep value, so identical in both directions of the inversion)."""
    return 1 + scale * ((1 - math.cos(math.pi * ((steps - t) / steps) ** 5.0)) / 2)


def guidance_scale_at(guidance: float, dynamic: bool, t: int, steps: int) -> float:
    return dynamic_guidance(guidance, t, steps) if dynamic else guidance


def cfg_rows(cond: Conditioning, guidance: float, dynamic: bool, batch: int,
             negative: torch.Tensor | None = None, positive: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
    """Text rows of one model call: [negative x B, positive x B] under CFG, else positive x B.
    `negative` overrides the conditioning's own negative embedding (null-text and
    negative-prompt inversion use this), `positive` its prompt embedding (prompt tuning)."""
    use_cfg = guidance > 1.0  # as the diffusers pipelines: dynamic CFG only reshapes an active guidance
    if cond.embeds.shape[0] not in (1, batch):
        raise errors.InputError(f"{cond.embeds.shape[0]} prompts for a batch of {batch} latents",
                                "Give one prompt, or one per video.")
    if positive is not None and positive.shape[0] not in (1, batch):
        raise errors.InputError(f"{positive.shape[0]} prompt-tuned embeddings for a batch of {batch} latents",
                                "Sample the batch the prompt tuning was run on.")
    pos = (cond.embeds if positive is None else positive).expand(batch, -1, -1)
    if not use_cfg:
        return pos, False
    neg = (cond.negative_embeds if negative is None else negative)
    neg = neg.expand(batch, -1, -1) if neg.shape[0] == 1 else neg
    return torch.cat([neg, pos]), True


def transformer_call(model: CogVideoX, x: torch.Tensor, text: torch.Tensor, t: int,
                     image_latents: torch.Tensor | None = None) -> torch.Tensor:
    """One transformer evaluation on latent rows `x` ``[R, F, C, h, w]`` with text rows; the
    RoPE table is built for this latent size; I2V image latents go on the channel axis.
    Returns the model output in float32 (float64 for a float64 model) on the compute device."""
    tr = model.transformer
    rows = x.shape[0]
    inp = x.to(model.device, model.dtype)
    if model.is_i2v:
        if image_latents is None:
            raise errors.InputError(f"{model.name} is an image-to-video model and needs image latents",
                                    "Encode the source video with this model: its first frame conditions I2V.")
        img = image_latents.to(model.device, model.dtype)
        inp = torch.cat([inp, img.repeat(rows // img.shape[0], 1, 1, 1, 1)], dim=2)
    rope = rotary_table(dict(tr.config), x.shape[1], x.shape[3], x.shape[4], device=model.device)
    ofs = None
    if tr.config.get("ofs_embed_dim"):
        ofs = inp.new_full((rows,), 2.0)
    timestep = torch.full((rows,), int(t), device=model.device, dtype=torch.long)
    out = tr(hidden_states=inp, encoder_hidden_states=text.to(model.device, model.dtype), timestep=timestep,
             ofs=ofs, image_rotary_emb=rope, return_dict=False)[0]
    return out.to(torch.promote_types(out.dtype, torch.float32))  # at least float32, float64 stays


check_guidance = check_scale  # one scale, >= 1 (`vidinv.family.check_scale`)


def make_denoiser(model: CogVideoX, cond: Conditioning, guidance: float = 1.0, dynamic_cfg: bool = False,
                  steps: int = 50, image_latents: torch.Tensor | None = None,
                  negative: Callable[[int], torch.Tensor] | None = None,
                  attention: Callable[[int, torch.Tensor], ContextManager | None] | None = None,
                  positive: Callable[[int], torch.Tensor] | None = None,
                  ) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``denoise(x, t)`` for the samplers: batches the CFG rows into one transformer call and
    combines them ``u + s (c - u)``; the same callable serves sampling and inversion, so
    guidance is identical in both directions. Inputs and outputs are float32 on the CPU.

    `negative(t)` may supply a per-timestep unconditional embedding (null-text inversion),
    `positive(t)` a per-timestep conditional one (prompt tuning; it overrides ``cond.embeds``).
    `attention(t, x)` may return a context manager entered around this step's transformer call
    (how `vidinv.attention` hands per-call state to its processors)."""
    check_guidance(guidance)

    def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
        b = x.shape[0]
        scale = guidance_scale_at(guidance, dynamic_cfg, t, steps)
        text, use_cfg = cfg_rows(cond, guidance, dynamic_cfg, b, None if negative is None else negative(t),
                                 None if positive is None else positive(t))
        rows = torch.cat([x, x]) if use_cfg else x
        ctx = attention(t, x) if attention is not None else None
        with ctx or contextlib.nullcontext():
            out = transformer_call(model, rows, text, t, image_latents)
        if use_cfg:
            u, c = out.chunk(2)
            out = u + scale * (c - u)
        return out.cpu()

    return denoise


# ----------------------------------------------------------------------------- checks before any model call

def check_latent(model: CogVideoX, latent: torch.Tensor) -> None:
    if latent.dim() != 5:
        raise errors.InputError(f"latent must be [B, F, C, H, W], got shape {tuple(latent.shape)}",
                                "Connect the output of this pack's VAE Encode node.")
    c = latent.shape[2]
    if c != model.latent_channels:
        raise errors.InputError(f"latent has {c} channels, {model.name} works on {model.latent_channels}",
                                "Encode the video with the same model's VAE.")
    p_t = model.patch_size_t or 1
    if latent.shape[1] % p_t:
        raise errors.InputError(f"{latent.shape[1]} latent frames do not divide into the model's temporal patches of "
                                f"{p_t}", "Encode the video with this pack's VAE Encode node (it pads the frames).")
    p = model.patch_size
    if latent.shape[-1] % p or latent.shape[-2] % p:
        raise errors.InputError(f"latent size {latent.shape[-1]}x{latent.shape[-2]} is not a multiple of the "
                                f"patch size {p}", "Resize the video to a multiple of "
                                f"{model.size_multiple} pixels before encoding.")


def check_conditioning(model: CogVideoX, cond: Conditioning) -> None:
    if not isinstance(cond, Conditioning):
        raise errors.InputError(f"the conditioning is {type(cond).__name__}, not a text conditioning",
                                "Encode the prompt with Encode Text (CogVideoX) and the same model.")
    if cond.model_fingerprint != model.fingerprint:
        raise errors.InputError("the conditioning was encoded by another model's text encoder",
                                "Encode the prompt with the model you sample with.")


def check_image_latents(model: CogVideoX, image_latents) -> None:
    if model.is_i2v and image_latents is None:
        raise errors.InputError(f"{model.name} is an image-to-video model: the latent carries no image conditioning",
                                "Encode the video with this pack's VAE Encode node and this model.")


# ----------------------------------------------------------------------------- the family

class CogVideoXFamily:
    """CogVideoX behind the model-family interface (`vidinv.family.Family`): DDIM on the model's
    timestep grid, text conditioning, joint text-image attention with RoPE for the reference."""
    name = "cogvideox"
    display_name = "CogVideoX"
    own_nodes = 'For CogVideoX use Encode Text (CogVideoX), DDIM Invert (exact) and DDIM Sample, or Reference Attention + Guided Sample.'  # the hint when one of its models reaches another family's node
    trajectory_version = 1  # what every version of the pack reads and writes
    text_conditioned = True
    optimisable = True  # null-text / prompt-tuning embeddings (DDIM: CogVideoX)
    model_conditioned = False  # model_conds belong to native trajectories
    grid_kind = "ddim"  # `vidinv.solver.Grid.kind` of its sampler
    solver_choice = True

    # -- model and VAE
    def networks(self, model: CogVideoX) -> tuple[torch.nn.Module, ...]:
        return (model.transformer,)

    def encode_frames(self, model, images, frames, size, width, height, tiling):
        """4k+1 frames fitted to the model's size grid; 1.5's frame pairs padded; I2V's first frame
        encoded as the image conditioning."""
        clip, note_frames = video.fit_frame_count(images, model.temporal_factor, frames)
        nh, nw = model.native_size
        clip, note_size = video.fit_size(clip, height or nh, width or nw, model.size_multiple, size,
                                         model.required_size)
        z, pad = pad_latent_frames(model, encode_video(model, clip, tiling))
        image_latents = encode_image_latents(model, clip, z.shape[1], tiling) if model.is_i2v else None
        return z, image_latents, pad, clip, f"{note_frames}; {note_size}"

    def encode_video(self, model, frames):
        return encode_video(model, frames)

    def decode(self, model, latents, tiling="auto"):
        return decode_video(model, latents, tiling)

    # -- sampling
    def grid(self, model, steps):
        return self.grid_from_config(model.scheduler_config, steps)

    def grid_from_config(self, config, steps):
        return ddim.sampler_grid(ddim.schedule_from_config(config), steps)

    def check_inputs(self, model, cond, latent, image_latents):
        check_latent(model, latent)
        check_conditioning(model, cond)
        check_image_latents(model, image_latents)

    def check_guidance(self, guidance):
        guidance.check_one_scale(self.display_name)

    def denoiser(self, model, cond, guidance, grid, image_latents=None, negative=None, attention=None, positive=None):
        index = {t: i for i, t in enumerate(grid.timesteps)}
        by_t = None if attention is None else (lambda t, x: attention(index[int(t)], x))
        den = make_denoiser(model, cond, guidance.scale, guidance.dynamic, grid.steps, image_latents, negative, by_t,
                            positive)
        return solver.at(den, grid.timesteps)

    # -- trajectories
    def trajectory_fields(self, model, cond, guidance, grid, image_latents):
        return dict(prompt=cond.prompt, negative_prompt=cond.negative_prompt, embeds=cond.embeds,
                    negative_embeds=cond.negative_embeds, guidance=float(guidance.scale),
                    dynamic_cfg=bool(guidance.dynamic), image_latents=None if image_latents is None
                    else image_latents.float())

    def trajectory_guidance(self, traj):
        return Guidance(traj.guidance, traj.dynamic_cfg)

    def source_conditioning(self, traj):
        return Conditioning(traj.prompt, traj.negative_prompt, traj.embeds, traj.negative_embeds,
                            traj.model_fingerprint)

    def edit_conditioning(self, model, traj, cond):
        if cond is None:
            raise errors.InputError("CogVideoX's guided sampling needs a conditioning",
                                    "Connect Encode Text (CogVideoX) with the edited prompt.")
        return cond

    def check_trajectory_grid(self, traj, grid, config):
        expected = list(grid.timesteps)
        if expected != list(traj.timesteps):
            raise errors.InputError(
                f"the trajectory's {traj.steps}-step grid {traj.timesteps[:3]}... does not match the model's "
                f"{expected[:3]}...", "The scheduler config differs from the one used at inversion; invert again.")
        return grid

    def check_trajectory(self, traj, model, refuse):
        traj.check_embeds(getattr(model, "max_text_length", None), getattr(model, "text_dim", None), refuse)
        i2v = getattr(model, "is_i2v", None)
        if i2v is not None and i2v != (traj.image_latents is not None):
            refuse("it carries image latents but the model is text-to-video" if not i2v else
                   "it carries no image latents but the model is image-to-video")
        p_t = getattr(model, "patch_size_t", None) or 1
        pad, frames = traj.extra.get("pad_frames", 0), traj.latents.shape[2]
        if pad >= p_t or frames % p_t:
            refuse(f"{frames} latent frames with pad_frames {pad}; the model patches {p_t} frame(s) at a time, so "
                   f"it pads fewer than {p_t} and needs a multiple of {p_t} frames")
        patch = getattr(model, "patch_size", None)
        if patch is not None and (traj.latents.shape[-2] % patch or traj.latents.shape[-1] % patch):
            refuse(f"latent size {traj.latents.shape[-1]}x{traj.latents.shape[-2]} is not a multiple of the "
                   f"model's patch size {patch}")

    def validate_trajectory(self, traj, refuse):
        if traj.sigmas is not None:
            refuse("a CogVideoX trajectory carries no sigma grid")
        if not all(isinstance(t, int) for t in traj.timesteps):
            refuse("a CogVideoX trajectory's timesteps must be whole numbers")
        lat = traj.latents
        if traj.image_latents is not None and traj.image_latents.shape != lat.shape[1:]:
            refuse(f"image_latents must be [B, F, C, H, W] = {tuple(lat.shape[1:])} like the latents, got "
                   f"{tuple(traj.image_latents.shape)}")

    def trajectory_summary(self, traj):
        return {}

    def step_place(self, traj, i):
        return f"timestep {traj.timesteps[i]}"

    def latent_extras(self, traj):
        return traj.image_latents, int(traj.extra.get("pad_frames", 0))

    def first_frame_latents(self, model, latent, first_frame):
        """An edited first frame for an I2V edit, fitted to the latent's size and encoded as the
        image conditioning (None: the source's)."""
        if first_frame is None:
            return None
        if not model.is_i2v:
            raise errors.InputError(f"{model.name} is a text-to-video model: it takes no first frame",
                                    "Disconnect first_frame, or load an image-to-video model (CogVideoX-5B-I2V).")
        first_frame = video.check_images(first_frame, "first_frame")
        h, w = latent.shape[-2] * model.spatial_factor, latent.shape[-1] * model.spatial_factor
        frame, _ = video.fit_size(first_frame[:1], h, w, model.size_multiple, "resize and crop", model.required_size)
        return encode_image_latents(model, frame, latent.shape[1])

    def edit_recipe(self, model):
        # image-to-video: the default chain (session 22's rule kept it: BENCHMARKS section 6)
        return EditRecipe() if model.is_i2v else MEASURED_RECIPES["CogVideoX text-to-video"]

    # -- reference attention
    def reference_options(self, options):
        if options.temporal:
            raise errors.InputError("'temporal' applies to Stable Video Diffusion only (CogVideoX's attention "
                                    "is already spatio-temporal)", "Turn 'temporal' off for CogVideoX.")
        return options

    def check_reference(self, model, options):
        options.validate(int(model.transformer.config.num_layers))

    def reference_layers(self, model, options):
        return options.block_indices(int(model.transformer.config.num_layers))

    def reference_processors(self, model, layers):
        return (cogvideox_attention.processors(model.transformer, layers),)

    # -- edit masks
    def edit_mask_tokens(self, model, traj, cond):
        """The edited prompt's tokens not in the source prompt (one row per video), for the attention
        mask: its image queries attend to the text in the same joint attention."""
        return editmask.prompt_tokens(lambda text: model.tokenizer(text, add_special_tokens=True).input_ids,
                                      traj, cond, model.max_text_length)

    def patch_grid(self, model):
        return (model.patch_size_t or 1, model.patch_size, model.patch_size)

    def reference_call(self, model, traj, grid, cond, guidance, options, per_cfg_row, negative, positive=None):
        """The reference pass: the trajectory latent through the same transformer with the source
        prompt, one row per video, or, with `per_cfg_row`, the source's negative and the source prompt
        (the rows' order of the sample call: [negative x B, positive x B]); with reference_text
        "edit" (the published recipe) with the prompts being sampled, per CFG row."""
        def call(ref: torch.Tensor, i: int):
            t, b = grid.timesteps[i], ref.shape[0]
            if options.reference_text == "source":
                text = traj.embeds.expand(b, -1, -1)
                if per_cfg_row:
                    text = torch.cat([traj.negative_embeds.expand(b, -1, -1), text])
            else:
                text, _ = cfg_rows(cond, guidance.scale, guidance.dynamic, b, None if negative is None else negative(t),
                                   None if positive is None else positive(t))
            return transformer_call(model, ref.repeat(text.shape[0] // b, 1, 1, 1, 1), text, t, traj.image_latents)
        return call


FAMILY = CogVideoXFamily()
