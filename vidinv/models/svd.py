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
import hashlib
import json
from pathlib import Path
from typing import Callable, ContextManager

import torch

from .. import edm, errors
from . import cogvideox
from .cogvideox import DTYPES, dtype_kwarg, on_device, read_json

PIPELINE_CLASS = "StableVideoDiffusionPipeline"
UNET_CLASS = "UNetSpatioTemporalConditionModel"
# subfolder -> the config file that must be in it
FILES = {"unet": "config.json", "vae": "config.json", "image_encoder": "config.json",
         "feature_extractor": "preprocessor_config.json", "scheduler": "scheduler_config.json"}
WEIGHTED = ("unet", "vae", "image_encoder")


# ----------------------------------------------------------------------------- folders

def is_model_folder(path) -> bool:
    """A folder counts when ``unet/config.json`` names UNetSpatioTemporalConditionModel."""
    return cogvideox.config_class(Path(path) / "unet" / "config.json") == UNET_CLASS


def find_model_folders(roots) -> dict[str, Path]:
    """SVD folders directly under each root, keyed by folder name (first root wins)."""
    return cogvideox.find_model_folders(roots, is_model_folder)


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
    if not cogvideox.readable_check(is_model_folder, path, "unet/config.json"):
        raise errors.InputError(f"{path.name!r}: unet/config.json does not name {UNET_CLASS}",
                                "Choose a Stable Video Diffusion model folder.")
    index = cogvideox.readable_check(lambda p: cogvideox.config_class(p / "model_index.json"), path,
                                     "model_index.json")
    if index not in (None, PIPELINE_CLASS):
        raise errors.InputError(f"{path.name!r}: model_index.json names {index!r}, "
                                f"not {PIPELINE_CLASS}", "Choose a Stable Video Diffusion model folder.")


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
    h = hashlib.sha256()
    for sub, name in FILES.items():
        cfg = {k: v for k, v in read_json(path / sub / name).items() if not k.startswith("_")}
        h.update(json.dumps(cfg, sort_keys=True).encode())
    params = list(unet.named_parameters())
    for name, p in params[:2] + params[-2:]:
        h.update(name.encode())
        h.update(p.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def load(path, dtype: str = "fp32", device=None, offload_device=None, name: str | None = None) -> SVD:
    """Load a diffusers Stable Video Diffusion folder. Modules rest on `offload_device` and move to
    `device` for the stage that uses them (`vidinv.models.cogvideox.on_device`)."""
    import diffusers
    import transformers
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionModelWithProjection
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    path = Path(path)
    check_model_folder(path)
    if dtype not in DTYPES:
        raise errors.InputError(f"precision {dtype!r} is not one of {', '.join(DTYPES)}", "Pick fp32, bf16 or fp16.")
    variants = {sub: weights_variant(path / sub) for sub in WEIGHTED}
    torch_dtype = DTYPES[dtype]
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
    with on_device(model.vae, model) as vae:
        for video in latents:
            z = video / model.scaling_factor
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
    `vidinv.svd_attention` hands per-call state to its processors: the SVD UNet takes no attention
    kwargs)."""
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
