"""Stable Video Diffusion in diffusers format: load a folder, build the image conditioning,
VAE encode/decode, and the denoiser callable that the samplers of `vidinv.edm` drive.

SVD is image-to-video: the first frame conditions the UNet twice, as CLIP image embeddings (the only
cross-attention token) and as its VAE latent concatenated on channels to every frame, plus three
"added time ids" (fps - 1, motion bucket, noise augmentation). Everything here follows
`StableVideoDiffusionPipeline` of diffusers; every shape and setting is read from the folder's
configs (latent channels, VAE compression, CLIP input size and normalisation, time-id width,
scheduler), so SVD, SVD-XT and the tiny test folder take the same path.

Latents keep SVD's layout ``[B, F, C, h, w]`` (no temporal compression: F = video frames) and are
scaled by the VAE's scaling factor; the image latents are not (the pipeline does not scale them).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Callable, ContextManager

import torch

from .. import edm, errors, video
from ..family import EditRecipe, Guidance
from ..attention import check_window_weight_rows
from . import configcheck, loading, svd_attention
from .loading import dtype_kwarg, on_device, read_json

PIPELINE_CLASS = "StableVideoDiffusionPipeline"
UNET_CLASS = "UNetSpatioTemporalConditionModel"
# subfolder -> the config file that must be in it
FILES = {"unet": "config.json", "vae": "config.json", "image_encoder": "config.json",
         "feature_extractor": "preprocessor_config.json", "scheduler": "scheduler_config.json"}
WEIGHTED = ("unet", "vae", "image_encoder")


# ----------------------------------------------------------------------------- folders

def is_model_folder(path) -> bool:
    """A folder counts when ``unet/config.json`` names UNetSpatioTemporalConditionModel."""
    return loading.names_class(path, "unet/config.json", UNET_CLASS)


def find_model_folders(roots) -> dict[str, Path]:
    """SVD folders directly under each root, keyed by folder name (first root wins)."""
    return loading.find_model_folders(roots, is_model_folder, check_model_folder)


def weights_variant(folder: Path) -> str | None:
    """None for plain weight files, "fp16" when only ``*.fp16.*`` files are there (the Stability
    repositories ship both; a partial download may hold only those)."""
    files = [f.name for f in folder.iterdir() if f.suffix in (".safetensors", ".bin")]
    if any(".fp16." not in f for f in files):
        return None
    if files:
        return "fp16"
    raise errors.InputError(f"{folder.parent.name!r}: {folder.name}/ holds no weights (*.safetensors or *.bin)",
                            "Download the whole model repository, weights included.")


_c, _n, _F = configcheck.count, configcheck.number, configcheck.Field
UNET_FIELDS = {  # diffusers' defaults where a key may be left out
    "in_channels": _c(1, 4096, default=8), "out_channels": _c(1, 4096, default=4),
    "block_out_channels": _F("ints", 1, 65536, default=[320, 640, 1280, 1280]),
    "cross_attention_dim": _c(1, 65536), "num_frames": _c(1, 4096), "sample_size": _c(1, 4096, null=True),
    "projection_class_embeddings_input_dim": _c(1, 65536, default=768), "addition_time_embed_dim": _c(1, 65536),
}
VAE_FIELDS = {
    "in_channels": _c(1, 64, default=3), "out_channels": _c(1, 64, default=3), "latent_channels": _c(1, 1024, default=4),
    "block_out_channels": _F("ints", 1, 65536, default=[64]), "layers_per_block": _c(1, 64),
    "scaling_factor": _n(None, 1e4, positive=True), "sample_size": _c(1, 1 << 16), "force_upcast": _F("bool"),
}
SCHEDULER_FIELDS = {**configcheck.SCHEDULER_FIELDS, "sigma_min": _n(None, 1e6, positive=True),
                    "sigma_max": _n(None, 1e6, positive=True)}


def _promises(cfg: dict) -> list:
    out = []
    u = cfg.get("unet/config.json")
    if u is not None:
        first = u["block_out_channels"][0]
        out += [configcheck.Blocks("unet", "down_blocks.", len(u["block_out_channels"]), "len(block_out_channels)"),
                configcheck.Promise("unet", "conv_in.weight", (first, u["in_channels"], 3, 3),
                                    "block_out_channels, in_channels"),
                configcheck.Promise("unet", "conv_out.weight", (u["out_channels"], first, 3, 3),
                                    "out_channels, block_out_channels"),
                configcheck.Promise("unet", "add_embedding.linear_1.weight",
                                    (4 * first, u["projection_class_embeddings_input_dim"]),
                                    "block_out_channels, projection_class_embeddings_input_dim")]
    v = cfg.get("vae/config.json")
    if v is not None:
        first, last = v["block_out_channels"][0], v["block_out_channels"][-1]
        out += [configcheck.Promise("vae", "encoder.conv_in.weight", (first, v["in_channels"], 3, 3),
                                    "block_out_channels, in_channels"),
                configcheck.Promise("vae", "decoder.conv_in.weight", (last, v["latent_channels"], 3, 3),
                                    "block_out_channels, latent_channels")]
    return out + configcheck.clip_promises(cfg.get("image_encoder/config.json", {}), projection=True)


SPEC = configcheck.Spec(
    files={"model_index.json": {}, "unet/config.json": UNET_FIELDS, "vae/config.json": VAE_FIELDS,
           "image_encoder/config.json": configcheck.CLIP_FIELDS, "feature_extractor/preprocessor_config.json": {},
           "scheduler/scheduler_config.json": SCHEDULER_FIELDS},
    promises=_promises)


def check_model_folder(path: Path) -> None:
    if not path.is_dir():
        raise errors.InputError(f"SVD model folder {str(path)!r} does not exist",
                                "Put a diffusers-format Stable Video Diffusion folder under models/diffusers/<name>.")
    missing = [f"{sub}/{name}" for sub, name in FILES.items() if not (path / sub / name).is_file()]
    if missing:
        raise errors.InputError(
            f"{path.name!r} is not a complete diffusers Stable Video Diffusion folder: missing {', '.join(missing)}",
            f"An SVD folder holds {', '.join(FILES)} and model_index.json; download the whole repository "
            "(for example stabilityai/stable-video-diffusion-img2vid-xt), not only the UNet.")
    if not loading.readable_check(is_model_folder, path, "unet/config.json"):
        raise errors.InputError(f"{path.name!r}: unet/config.json does not name {UNET_CLASS}",
                                "Choose a Stable Video Diffusion model folder.")
    configs = configcheck.check_configs(path, SPEC)  # every field's type and range first
    index = loading.readable_check(lambda p: loading.config_class(p / "model_index.json"), path,
                                     "model_index.json")
    if index not in (None, PIPELINE_CLASS):
        raise errors.InputError(f"{path.name!r}: model_index.json names {index!r}, "
                                f"not {PIPELINE_CLASS}", "Choose a Stable Video Diffusion model folder.")
    configcheck.check_weights(path, SPEC, configs)  # then the sizes against the weights' headers


# ----------------------------------------------------------------------------- the model value

@dataclasses.dataclass(eq=False)
class SVD:
    """Everything later stages need, and nothing global."""
    name: str
    path: str
    unet: torch.nn.Module
    vae: torch.nn.Module
    image_encoder: torch.nn.Module
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    scheduler_config: dict
    dtype: torch.dtype
    device: torch.device
    offload_device: torch.device
    fingerprint: str
    reference: object = None
    family: str = "svd"

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def size_multiple(self) -> int:
        """Pixel sizes must be multiples of this (the VAE's compression; the UNet takes any size)."""
        return self.spatial_factor

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame: SVD's VAE encodes frame by frame."""
        return 1

    @property
    def native_frames(self) -> int:
        """The frame count the UNet was trained for (14 for SVD, 25 for SVD-XT); others run too."""
        return int(self.unet.config.num_frames)

    @property
    def native_size(self) -> tuple[int, int] | None:
        s = self.unet.config.sample_size
        if s is None:
            return None
        h, w = (s, s) if isinstance(s, int) else s
        return int(h) * self.spatial_factor, int(w) * self.spatial_factor

    @property
    def clip_size(self) -> int:
        """The CLIP vision tower's input size; the first frame is resized to it."""
        return int(self.image_encoder.config.image_size)

    @property
    def embed_dim(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    def describe(self) -> str:
        size = "x".join(map(str, reversed(self.native_size))) if self.native_size else "any size"
        return (f"{self.name}: image-to-video, {self.latent_channels} latent channels, native {size}, "
                f"{self.native_frames} frames, CLIP {self.clip_size}px, {str(self.dtype).replace('torch.', '')}")


def fingerprint(path: Path, unet) -> str:
    """Identifies a model cheaply: its configs and a few bytes of a few UNet weights."""
    return loading.fingerprint([path / sub / name for sub, name in FILES.items()], unet)


@loading.outside_inference_mode
def load(path, dtype: str = "fp32", device=None, offload_device=None, name: str | None = None) -> SVD:
    """Load a diffusers Stable Video Diffusion folder. Modules rest on `offload_device` and move to
    `device` for the stage that uses them (`vidinv.models.loading.on_device`)."""
    import diffusers
    import transformers
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionModelWithProjection
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    path = Path(path)
    check_model_folder(path)
    torch_dtype = loading.check_dtype(dtype)
    variants = {sub: weights_variant(path / sub) for sub in WEIGHTED}
    device = torch.device(device or "cpu")
    offload_device = torch.device(offload_device or device)
    d_kw = dtype_kwarg(diffusers.__version__, (0, 42), torch_dtype)
    unet = UNetSpatioTemporalConditionModel.from_pretrained(path / "unet", variant=variants["unet"], **d_kw)
    vae = AutoencoderKLTemporalDecoder.from_pretrained(path / "vae", variant=variants["vae"], **d_kw)
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(
        path / "image_encoder", variant=variants["image_encoder"],
        **dtype_kwarg(transformers.__version__, (4, 56), torch_dtype))
    pre = read_json(path / "feature_extractor" / "preprocessor_config.json")
    scheduler_config = read_json(path / "scheduler" / "scheduler_config.json")
    for m in (unet, vae, image_encoder):
        m.eval().requires_grad_(False).to(offload_device)
    model = SVD(name or path.name, str(path), unet, vae, image_encoder,
                tuple(float(v) for v in pre.get("image_mean", OPENAI_CLIP_MEAN)),
                tuple(float(v) for v in pre.get("image_std", OPENAI_CLIP_STD)),
                scheduler_config, torch_dtype, device, offload_device, fingerprint(path, unet))
    check_components(model)
    return model


def check_components(model: SVD) -> None:
    """The parts of a folder must fit together: UNet input = noisy + image latents, cross-attention
    width = CLIP projection, added-time embedding = three time ids."""
    c = model.unet.config
    if int(c.in_channels) != 2 * model.latent_channels:
        raise errors.InputError(f"{model.name}: UNet in_channels {c.in_channels} is not twice the VAE's "
                                f"{model.latent_channels} latent channels (noisy latent + image latent)",
                                "The UNet and the VAE of this folder do not belong together.")
    proj = int(model.image_encoder.config.projection_dim)
    if model.embed_dim != proj:
        raise errors.InputError(f"{model.name}: UNet cross_attention_dim {model.embed_dim} differs from the image "
                                f"encoder's projection_dim {proj}",
                                "The UNet and the image encoder of this folder do not belong together.")
    want = int(model.unet.add_embedding.linear_1.in_features)
    if 3 * int(c.addition_time_embed_dim) != want:
        raise errors.InputError(f"{model.name}: the UNet's added-time embedding takes {want} values, not 3 time ids "
                                f"of {c.addition_time_embed_dim}", "This UNet is not an SVD image-to-video UNet.")
    edm.grid_from_config(model.scheduler_config, 1)  # a scheduler the sampler understands


# ----------------------------------------------------------------------------- frames

def check_frames(model: SVD, frames: torch.Tensor, what: str = "frames") -> None:
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise errors.InputError(f"{what} must be an IMAGE batch [N, H, W, 3], got shape {tuple(frames.shape)}",
                                "Connect video frames or an image.")
    h, w = frames.shape[1:3]
    f = model.spatial_factor
    if h % f or w % f:
        raise errors.InputError(f"{what} are {w}x{h} pixels, not multiples of {f} (the VAE's compression)",
                                f"Resize to a multiple of {f} pixels, for example "
                                f"{w // f * f}x{h // f * f}.")


@contextlib.contextmanager
def vae_precision(model: SVD, vae):
    """The pipeline encodes the image in float32 when the VAE is fp16 and asks to be upcast
    (``force_upcast``); restored afterwards."""
    upcast = vae.dtype == torch.float16 and bool(vae.config.get("force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    try:
        yield vae.dtype
    finally:
        if upcast:
            vae.to(torch.float16)


@torch.no_grad()
def encode_video(model: SVD, frames: torch.Tensor, chunk: int = 14, sample: bool = False,
                 seed: int = 0) -> torch.Tensor:
    """IMAGE frames ``[N, H, W, 3]`` (0..1) -> latent ``[1, N, C, h, w]`` float32, scaled by the
    VAE's scaling factor. The VAE encodes frame by frame (in chunks of `chunk` frames); the
    posterior mode is used unless `sample` (then drawn with `seed`)."""
    check_frames(model, frames)
    loading.require_vae_memory(model, frames.shape[0], frames.shape[1], frames.shape[2], False, "VAE-encoding")
    x = frames.permute(0, 3, 1, 2).float() * 2 - 1  # [N, 3, H, W] in -1..1
    g = torch.Generator().manual_seed(int(seed))
    out = []
    with on_device(model.vae, model) as vae, vae_precision(model, vae) as dt:
        for part in x.split(max(1, int(chunk))):
            dist = vae.encode(part.to(model.device, dt)).latent_dist
            if sample:
                z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g).to(dist.mean)
            else:
                z = dist.mode()
            out.append(z.float().cpu())
    return torch.cat(out).unsqueeze(0) * model.scaling_factor


@torch.no_grad()
def decode_video(model: SVD, latents: torch.Tensor, decode_chunk_size: int = 14) -> torch.Tensor:
    """Latent ``[B, F, C, h, w]`` -> IMAGE frames ``[B*F, H, W, 3]`` float32 in 0..1. The temporal
    decoder sees `decode_chunk_size` frames at a time (``num_frames`` = the chunk's length), as the
    pipeline's ``decode_latents``; one video at a time (the pipeline's chunks may straddle videos)."""
    if latents.dim() != 5 or latents.shape[2] != model.latent_channels:
        raise errors.InputError(f"latent of shape {tuple(latents.shape)} is not [B, F, {model.latent_channels}, H, W] "
                                f"for {model.name}'s VAE", "Decode with the model that made the latent.")
    out = []
    h, w = latents.shape[-2] * model.spatial_factor, latents.shape[-1] * model.spatial_factor
    loading.require_vae_memory(model, latents.shape[0] * latents.shape[1], h, w, False, "VAE-decoding")
    with on_device(model.vae, model) as vae:
        for one in latents:
            z = one / model.scaling_factor
            for part in z.split(max(1, int(decode_chunk_size))):
                frames = vae.decode(part.to(model.device, model.dtype), num_frames=part.shape[0]).sample
                out.append(((frames.float().cpu() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1))
    return torch.cat(out)


# ----------------------------------------------------------------------------- image conditioning

@dataclasses.dataclass(eq=False)
class Conditioning:
    """The first frame(s) encoded for one model, one row per video; float32 on the CPU. The
    unconditional row of CFG is zeros for both, as in the pipeline."""
    image_embeds: torch.Tensor  # [B, 1, D] CLIP image embeddings
    image_latents: torch.Tensor  # [B, C, h, w] VAE latent (mode) of the noise-augmented frame, unscaled
    added_time_ids: torch.Tensor  # [B, 3]: fps - 1, motion bucket id, noise augmentation strength
    fps: int
    motion_bucket_id: int
    noise_aug_strength: float
    seed: int
    model_fingerprint: str


def clip_pixels(model: SVD, images: torch.Tensor) -> torch.Tensor:
    """IMAGE ``[B, H, W, 3]`` -> CLIP input ``[B, 3, S, S]``, as the pipeline prepares a PIL image:
    antialiased bicubic resize to the tower's size in -1..1 (aspect not kept), then CLIP's
    normalisation from the folder's preprocessor config."""
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing

    x = images.permute(0, 3, 1, 2).float() * 2 - 1
    x = (_resize_with_antialiasing(x, (model.clip_size, model.clip_size)) + 1) / 2
    mean = torch.tensor(model.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.image_std).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def encode_image(model: SVD, images: torch.Tensor, fps: int = 7, motion_bucket_id: int = 127,
                 noise_aug_strength: float = 0.02, seed: int = 0) -> Conditioning:
    """First frames ``[B, H, W, 3]`` (one per video, the video's size) -> Conditioning.

    As `StableVideoDiffusionPipeline.__call__`: CLIP image embeddings of the resized frame; the VAE
    latent (posterior mode, unscaled) of ``frame + noise_aug_strength * noise`` in -1..1, the noise
    drawn on the CPU from `seed` (deterministic on every device); time ids ``[fps - 1, motion_bucket_id,
    noise_aug_strength]`` (SVD was trained on fps - 1)."""
    check_frames(model, images, "first frames")
    if not fps >= 1:
        raise errors.InputError(f"fps {fps} must be at least 1", "SVD is conditioned on fps - 1; 7 is the default.")
    if not noise_aug_strength >= 0:
        raise errors.InputError(f"noise augmentation {noise_aug_strength} must be >= 0", "0.02 is the default.")
    with on_device(model.image_encoder, model) as enc:
        pixels = clip_pixels(model, images).to(model.device, enc.dtype)
        embeds = enc(pixels).image_embeds.float().cpu().unsqueeze(1)
    x = images.permute(0, 3, 1, 2).float() * 2 - 1
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(int(seed)))
    x = x + noise_aug_strength * noise
    with on_device(model.vae, model) as vae, vae_precision(model, vae) as dt:
        latents = vae.encode(x.to(model.device, dt)).latent_dist.mode().float().cpu()
    ids = torch.tensor([[fps - 1, motion_bucket_id, noise_aug_strength]], dtype=torch.float32)
    return Conditioning(embeds, latents, ids.repeat(images.shape[0], 1), int(fps), int(motion_bucket_id),
                        float(noise_aug_strength), int(seed), model.fingerprint)


# ----------------------------------------------------------------------------- denoiser

def check_latent(model: SVD, latent: torch.Tensor, cond: Conditioning | None = None) -> None:
    if latent.dim() != 5 or latent.shape[2] != model.latent_channels:
        raise errors.InputError(f"latent of shape {tuple(latent.shape)} is not [B, F, {model.latent_channels}, H, W] "
                                f"for {model.name}", "Encode the video with the same model's VAE.")
    if cond is None:
        return
    if cond.model_fingerprint != model.fingerprint:
        raise errors.InputError("the image conditioning was encoded by another model",
                                "Encode the first frame with the model you sample with.")
    if cond.image_latents.shape[0] not in (1, latent.shape[0]):
        raise errors.InputError(f"{cond.image_latents.shape[0]} first frames for a batch of {latent.shape[0]} videos",
                                "Give one first frame, or one per video.")
    if tuple(cond.image_latents.shape[-2:]) != tuple(latent.shape[-2:]):
        f = model.spatial_factor
        raise errors.InputError(
            f"the first frame is {cond.image_latents.shape[-1] * f}x{cond.image_latents.shape[-2] * f} pixels, the "
            f"video {latent.shape[-1] * f}x{latent.shape[-2] * f}", "Use a first frame of the video's size.")


def frame_guidance(min_guidance: float, max_guidance: float, frames: int) -> torch.Tensor:
    """The pipeline's guidance: linear from `min_guidance` (first frame) to `max_guidance` (last),
    shaped ``[1, F, 1, 1, 1]`` (float64)."""
    return torch.linspace(min_guidance, max_guidance, frames, dtype=torch.float64).view(1, frames, 1, 1, 1)


def uses_cfg(min_guidance: float, max_guidance: float) -> bool:
    """CFG rows are batched when any frame's scale exceeds 1 (guidance 1 everywhere = one row)."""
    return max(min_guidance, max_guidance) > 1.0


def unet_call(model: SVD, x: torch.Tensor, grid: edm.Grid, i: int, embeds: torch.Tensor, image_latents: torch.Tensor,
              time_ids: torch.Tensor) -> torch.Tensor:
    """One UNet evaluation at grid point i on latent rows `x` ``[R, F, C, h, w]`` (unscaled, sigma_i):
    input ``c_in x`` with the image latents on channels (repeated over frames), the CLIP rows as
    cross-attention tokens, model time ``grid.timesteps[i]``. Returns the network output F (v) in
    float32 (float64 for a float64 model) on the compute device."""
    rows, frames = x.shape[:2]
    inp = (x * edm.c_in(grid.sigmas[i])).to(model.device, model.dtype)
    img = image_latents.to(model.device, model.dtype)
    img = img.repeat(rows // img.shape[0], 1, 1, 1).unsqueeze(1).expand(-1, frames, -1, -1, -1)
    t = torch.tensor(grid.timesteps[i], dtype=torch.float32, device=model.device)
    out = model.unet(torch.cat([inp, img], dim=2), t,
                     encoder_hidden_states=embeds.to(model.device, model.dtype).repeat(rows // embeds.shape[0], 1, 1),
                     added_time_ids=time_ids.to(model.device, model.dtype).repeat(rows // time_ids.shape[0], 1),
                     return_dict=False)[0]
    return out.to(torch.promote_types(out.dtype, torch.float32))


def make_denoiser(model: SVD, cond: Conditioning, grid: edm.Grid, min_guidance: float = 1.0,
                  max_guidance: float = 1.0,
                  attention: Callable[[int, torch.Tensor], ContextManager | None] | None = None,
                  ) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``denoise(x, i) -> D(x; sigma_i)`` for `vidinv.edm` on latents ``[B, F, C, h, w]``.

    Under CFG one UNet call carries ``[uncond x B, cond x B]`` (uncond = zero image embeddings and
    zero image latents, same time ids, as the pipeline) and the rows combine as
    ``D_u + s_f (D_c - D_u)`` with the frame-wise scale of `frame_guidance` (the pipeline combines the
    v outputs; D is affine in v, so it is the same). The same callable serves sampling and inversion,
    so guidance is identical in both directions. Inputs and outputs are on the CPU.

    `attention(i, x)` may return a context manager that is entered around this step's UNet call (how
    `vidinv.attention` hands per-call state to the processors of `vidinv.models.svd_attention`: the
    SVD UNet takes no attention kwargs)."""
    cfg = uses_cfg(min_guidance, max_guidance)

    def denoise(x: torch.Tensor, i: int) -> torch.Tensor:
        b, frames = x.shape[:2]
        embeds = cond.image_embeds.expand(b, -1, -1) if cond.image_embeds.shape[0] == 1 else cond.image_embeds
        latents = cond.image_latents.expand(b, -1, -1, -1) if cond.image_latents.shape[0] == 1 else cond.image_latents
        ids = cond.added_time_ids.expand(b, -1) if cond.added_time_ids.shape[0] == 1 else cond.added_time_ids
        rows = x
        if cfg:
            rows = torch.cat([x, x])
            embeds = torch.cat([torch.zeros_like(embeds), embeds])
            latents = torch.cat([torch.zeros_like(latents), latents])
            ids = torch.cat([ids, ids])
        ctx = attention(i, x) if attention is not None else None
        with ctx or contextlib.nullcontext():
            out = unet_call(model, rows, grid, i, embeds, latents, ids)
        d = edm.denoised(rows.to(out.device), out, grid.sigmas[i], grid.prediction_type)
        if cfg:
            u, c = d.chunk(2)
            d = u + frame_guidance(min_guidance, max_guidance, frames).to(d) * (c - u)
        return d.cpu()

    return denoise


# ----------------------------------------------------------------------------- checks before any model call

CONDITIONING_KEYS = ("added_time_ids", "fps", "motion_bucket_id", "noise_aug_strength", "seed",
                     "min_guidance", "max_guidance")  # what an SVD trajectory's `conditioning` holds
SIGMA_RTOL = 1e-6  # sigma grids equal up to float32 rounding count as the same grid


def check_inputs(model: SVD, cond, latent: torch.Tensor) -> None:
    """The latent ``[B, F, C, h, w]`` and the first-frame conditioning, before any model call."""
    if not isinstance(cond, Conditioning):
        kind = f"{type(cond).__module__.rsplit('.', 1)[-1]}.{type(cond).__name__}"
        raise errors.InputError(f"the conditioning is {kind}, not an SVD first-frame conditioning",
                                "Encode the first frame with the SVD image encode node of the same model.")
    check_latent(model, latent, cond)


def check_guidance(min_guidance: float, max_guidance: float) -> None:
    if not (math.isfinite(min_guidance) and math.isfinite(max_guidance) and min_guidance >= 1 and max_guidance >= 1):
        raise errors.InputError(f"guidance {min_guidance} .. {max_guidance} must be finite and >= 1 (below 1 it would "
                                "weaken the first frame instead of guiding)",
                                "SVD's defaults are min 1, max 3; 1 and 1 is no guidance.")


def grid_for(model: SVD, steps: int) -> edm.Grid:
    try:
        return edm.grid_from_config(model.scheduler_config, int(steps))
    except ValueError as err:
        raise errors.InputError(f"{model.name}: no {steps}-step Euler grid ({err})",
                                "Pick a step count between 1 and the model's training timesteps "
                                "(25 is SVD's).") from err


def initial_sigma(model: SVD, steps: int) -> float:
    """The scale of fresh unit noise at the grid's start (the scheduler's ``init_noise_sigma``)."""
    return grid_for(model, steps).init_noise_sigma


def source_conditioning(traj) -> Conditioning:
    """The first-frame conditioning a trajectory was inverted with (its reference passes use it)."""
    traj.check_family(FAMILY.name)
    c = traj.conditioning
    return Conditioning(traj.embeds.float(), traj.image_latents.float(),
                        torch.tensor(c["added_time_ids"], dtype=torch.float32), int(c["fps"]),
                        int(c["motion_bucket_id"]), float(c["noise_aug_strength"]), int(c["seed"]),
                        traj.model_fingerprint)


# ----------------------------------------------------------------------------- the family

class SVDFamily:
    """Stable Video Diffusion behind the model-family interface (`vidinv.family.Family`): Euler on
    the EDM sigma grid, first-frame conditioning with frame-wise guidance, the UNet's self-attention
    for the reference."""
    name = "svd"
    display_name = "Stable Video Diffusion"
    own_nodes = 'For Stable Video Diffusion use Encode First Frame (SVD), Euler Invert (SVD, exact) and Euler Sample (SVD), or Reference Attention + Guided Sample (SVD).'  # the hint when one of its models reaches another family's node
    trajectory_version = 2  # so that a pack from before SVD refuses the file instead of misreading it
    text_conditioned = False
    optimisable = False  # null-text / prompt-tuning embeddings: CogVideoX's
    model_conditioned = False  # model_conds belong to native trajectories
    grid_kind = "euler"  # `vidinv.solver.Grid.kind` of its sampler
    solver_choice = False

    # -- model and VAE
    def networks(self, model: SVD) -> tuple[torch.nn.Module, ...]:
        return (model.unet,)

    def encode_frames(self, model, images, frames, size, width, height, tiling):
        """Every frame (no temporal compression, no padding); 0 keeps the video's size, rounded down
        to the VAE's compression."""
        m = model.spatial_factor
        h, w = images.shape[1:3]
        clip, note_size = video.fit_size(images, height or max(m, h // m * m), width or max(m, w // m * m), m, size)
        note = f"{clip.shape[0]} frames used (SVD takes any count); {note_size}"
        return encode_video(model, clip), None, 0, clip, note

    def encode_video(self, model, frames):
        return encode_video(model, frames)

    def decode(self, model, latents, tiling="auto"):
        return decode_video(model, latents)

    # -- sampling
    def grid(self, model, steps):
        return edm.sampler_grid(grid_for(model, steps))

    def grid_from_config(self, config, steps):
        try:
            return edm.sampler_grid(edm.grid_from_config(config, steps))
        except ValueError as err:
            raise errors.InputError(f"the model's scheduler cannot make this trajectory's {steps}-step grid "
                                    f"({err})", "Use the model that made the trajectory.") from err

    def check_inputs(self, model, cond, latent, image_latents):
        check_inputs(model, cond, latent)
        if image_latents is not None:
            raise errors.InputError("the latent carries CogVideoX image-to-video conditioning, which SVD does not take",
                                    "Encode the video with this SVD model's VAE.")

    def check_guidance(self, guidance):
        if guidance.dynamic:
            raise errors.InputError("dynamic_cfg is CogVideoX's guidance schedule; it does not apply to Stable "
                                    "Video Diffusion", "Turn dynamic_cfg off, or use Guided Sample (SVD) for SVD's "
                                    "frame-wise min/max guidance.")
        if guidance.second is not None:
            raise errors.InputError(f"a second expert's guidance {guidance.second} was given; Stable Video Diffusion "
                                    "has one network", "Leave the second guidance unset.")
        check_guidance(guidance.first_scale, guidance.scale)

    def denoiser(self, model, cond, guidance, grid, image_latents=None, negative=None, attention=None, positive=None):
        if negative is not None:
            raise errors.InputError("SVD's unconditional branch is a zero image conditioning; it takes no negative",
                                    "Set negative to 'conditioning' for SVD.")
        if positive is not None:
            raise errors.InputError("SVD is conditioned on an image, not a prompt: it takes no prompt-tuned embeddings",
                                    "Set tuned_eta to 1 for SVD.")
        return make_denoiser(model, cond, grid, guidance.first_scale, guidance.scale, attention)

    # -- trajectories
    def trajectory_fields(self, model, cond, guidance, grid, image_latents):
        return dict(prompt="", negative_prompt="", embeds=cond.image_embeds.float(),
                    negative_embeds=torch.zeros_like(cond.image_embeds, dtype=torch.float32),
                    guidance=float(guidance.scale), dynamic_cfg=False, image_latents=cond.image_latents.float(),
                    conditioning={"added_time_ids": cond.added_time_ids.tolist(), "fps": cond.fps,
                                  "motion_bucket_id": cond.motion_bucket_id,
                                  "noise_aug_strength": cond.noise_aug_strength, "seed": cond.seed,
                                  "min_guidance": float(guidance.first_scale), "max_guidance": float(guidance.scale)})

    def trajectory_guidance(self, traj):
        c = traj.conditioning
        return Guidance(c.get("max_guidance", traj.guidance), first=c.get("min_guidance", 1.0))

    def source_conditioning(self, traj):
        return source_conditioning(traj)

    def edit_conditioning(self, model, traj, cond):
        return source_conditioning(traj) if cond is None else cond

    def check_trajectory_grid(self, traj, grid, config):
        """Step count, prediction type, sigmas and model times (up to float32 rounding); returns the
        trajectory's own grid (its stored sigmas and model times)."""
        def fix():
            ours, theirs = traj.scheduler_config, config or {}
            changed = [f"{k} {ours.get(k)!r} -> {theirs.get(k)!r}" for k in sorted(set(ours) | set(theirs))
                       if config is not None and not k.startswith("_") and ours.get(k) != theirs.get(k)]
            where = f" (changed settings: {', '.join(changed)})" if changed else ""
            return (f"The model's scheduler config differs from the one used at inversion{where}; sample with the "
                    "model that made the trajectory, or invert again with this one.")

        if grid.steps != traj.steps:
            raise errors.InputError(f"the trajectory has {traj.steps} steps, the grid given has {grid.steps}",
                                    "Sample with the trajectory's own step count.")
        prediction = traj.scheduler_config.get("prediction_type", "epsilon")
        if grid.prediction_type != prediction:
            raise errors.InputError(f"the trajectory was inverted with {prediction!r} outputs, the model's scheduler "
                                    f"says {grid.prediction_type!r}", fix())

        def span(sigmas):
            return f"sigma {sigmas[0]:.6g} .. {min(s for s in sigmas if s > 0):.6g}, then {sigmas[-1]:.6g}"

        for what, ours, theirs in (("sigma", traj.sigmas, grid.sigmas), ("model time", traj.timesteps, grid.timesteps)):
            for k, (a, b) in enumerate(zip(ours, theirs)):
                if not math.isclose(a, b, rel_tol=SIGMA_RTOL, abs_tol=0.0):
                    raise errors.InputError(
                        f"the trajectory's {traj.steps}-step grid ({span(traj.sigmas)}) does not match the model's "
                        f"({span(grid.sigmas)}): {what} at step {k} is {a:.9g} in the trajectory, {b:.9g} for the "
                        "model", fix())
        return edm.steps_grid(traj.sigmas, grid.prediction_type, traj.timesteps, grid.init_noise_sigma)

    def check_trajectory(self, traj, model, refuse):
        traj.check_embeds(1, getattr(model, "embed_dim", None), refuse)

    def validate_trajectory(self, traj, refuse):
        lat, sig = traj.latents, traj.sigmas
        if sig is None or len(sig) != len(traj.timesteps) + 1:
            refuse(f"an SVD trajectory needs {len(traj.timesteps) + 1} sigmas (one per latent), "
                   f"got {'none' if sig is None else len(sig)}")
        if any(not a > b for a, b in zip(sig, sig[1:])) or sig[-1] < 0:
            refuse(f"the sigmas {sig[:2]}...{sig[-2:]} do not decrease to >= 0")
        missing = [k for k in CONDITIONING_KEYS if k not in traj.conditioning]
        if missing or traj.image_latents is None or traj.image_latents.dim() != 4:
            refuse("an SVD trajectory needs the source's first-frame latent [B, C, h, w] and its conditioning values "
                   f"(missing: {', '.join(missing) or 'image_latents'})")
        b, _, c, h, w = lat.shape[1:]
        if traj.image_latents.shape != (b, c, h, w):
            refuse(f"image_latents must be [B, C, h, w] = {(b, c, h, w)} like the latents, got "
                   f"{tuple(traj.image_latents.shape)}")
        ids = traj.conditioning["added_time_ids"]
        if not (isinstance(ids, list) and len(ids) == b and all(isinstance(r, list) and len(r) == 3 and
                                                                 all(map(errors.is_number, r)) for r in ids)):
            refuse(f"conditioning.added_time_ids must be {b} row(s) of 3 numbers, got {errors.describe_value(ids)}")
        for key in CONDITIONING_KEYS[1:]:
            value = traj.conditioning[key]
            whole = key in ("fps", "motion_bucket_id", "seed")
            if not (errors.is_count(value) if whole else errors.is_number(value) and value >= 0):
                refuse(f"conditioning.{key} must be a {'whole ' if whole else ''}number >= 0, got "
                       f"{errors.describe_value(value)}")

    def trajectory_summary(self, traj):
        return dict(sigma_max=traj.sigmas[0], sigma_min=min(s for s in traj.sigmas if s > 0),
                    **{k: traj.conditioning.get(k) for k in CONDITIONING_KEYS if k != "added_time_ids"})

    def step_place(self, traj, i):
        return f"sigma {traj.sigmas[i]:.4g}"

    def latent_extras(self, traj):
        return None, 0  # the image latents belong to the conditioning, not to the latent

    def first_frame_latents(self, model, latent, first_frame):
        if first_frame is not None:
            raise errors.InputError("first_frame is for CogVideoX image-to-video models; Stable Video Diffusion "
                                    "takes its edited first frame as the conditioning",
                                    "Encode the edited frame with Encode First Frame (SVD), connect it to "
                                    "conditioning, and disconnect first_frame.")
        return None

    def edit_recipe(self, model):
        return EditRecipe()  # no prompt, so no difference mask: the guide and the cut level do not apply

    # -- reference attention
    def reference_options(self, options):
        if options.text:
            raise errors.InputError(
                "reference 'text' does not apply to Stable Video Diffusion: its self-attention holds image tokens only "
                "(the one CLIP image token is in cross-attention, which reference attention leaves alone)",
                "Turn 'text' off for SVD.")
        if options.reference_text != "source":
            raise errors.InputError(
                f"reference_text {options.reference_text!r} does not apply to Stable Video Diffusion: its reference "
                "pass always uses the trajectory's source first frame", "Set reference_text to 'source' for SVD.")
        return options

    def check_reference(self, model, options):
        check_window_weight_rows(options.start, options.end, options.weight, options.rows)
        self.reference_layers(model, options)

    def reference_layers(self, model, options):
        return svd_attention.self_attention_layers(model.unet, options.blocks, options.temporal)

    def reference_processors(self, model, layers):
        return (svd_attention.processors(layers),)

    def edit_mask_tokens(self, model, traj, cond):
        raise errors.InputError("Stable Video Diffusion has no prompt to take a mask from (by attention or by "
                                "prediction difference)",
                                "Connect a MASK (the region the edit may change) instead of a mask threshold.")

    def reference_call(self, model, traj, grid, cond, guidance, options, per_cfg_row, negative, positive=None):
        """The reference pass: the trajectory latent through the same UNet with the source's first
        frame, without guidance (one row per video), or with the inversion's guidance when
        `per_cfg_row` (its unconditional row: zero image conditioning)."""
        inverted = self.trajectory_guidance(traj) if per_cfg_row else Guidance()
        return make_denoiser(model, source_conditioning(traj), grid, inverted.first_scale, inverted.scale)


FAMILY = SVDFamily()
