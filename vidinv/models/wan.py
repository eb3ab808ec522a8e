"""Wan 2.x in diffusers format, text-to-video and image-to-video: load a folder, encode text (UMT5),
VAE encode/decode, the first-frame conditioning of image-to-video models, and the denoiser that the
flow-matching Euler grid of `vidinv.flow` drives; `FAMILY` puts it behind the model-family interface.

Every shape and setting is read from the folder's configs: latent channels (``z_dim``), the VAE's
spatial and temporal compression (``scale_factor_spatial`` / ``scale_factor_temporal``), the latent
normalisation (``latents_mean`` / ``latents_std``), the transformer's patch size, heads, layers and
input channels, the text width, the CLIP image width (``image_dim``), the flow shift of the scheduler.
Wan 2.1 T2V 1.3B / 14B, Wan 2.1 I2V 14B (480p, 720p), Wan 2.2 TI2V-5B, Wan 2.2 T2V / I2V A14B and the
bundled tiny model take the same path.

Wan 2.2 A14B folders hold two experts, ``transformer`` (high noise) and ``transformer_2`` (low noise),
and ``boundary_ratio`` in model_index.json: as the diffusers pipelines do, a step at model time t
uses the first when ``t >= boundary_ratio * num_train_timesteps`` (compared in float32, as a
timestep tensor compares), else the second (`expert_index`), with its own guidance scale
(``Guidance.second``, diffusers' ``guidance_scale_2``). The inverse step calls the expert of its
noisier point, which is the one the sampler calls there. With offloading only the expert in use is on
the device (`loading.use`).

Image-to-video (`ImageCondition`), as WanImageToVideoPipeline conditions: the video's first frame,
encoded by the VAE as the clip [first frame, grey frames] and normalised, rides with the latent on
channels after a first-frame mask (``scale_factor_temporal`` channels, ones on the first latent frame);
the CLIP vision encoder's second-to-last hidden states of that frame enter cross-attention ahead of
the text (``encoder_hidden_states_image``), the same for both CFG rows (Wan 2.2 I2V A14B has no CLIP
encoder: ``image_dim`` is null, and only the channels carry the frame).

Wan 2.2 TI2V-5B (``expand_timesteps`` in model_index.json, a transformer that takes the latent alone)
samples text-to-video without a first frame, and image-to-video with one, as WanImageToVideoPipeline
does with ``expand_timesteps``: the first latent frame of the transformer's input is the first
frame's latent (`ImageCondition` of one latent frame), and the transformer gets per-token timesteps,
0 on that frame's tokens (it is clean) and t elsewhere. The first latent frame of the sampled latent
is clean at every step: its velocity is the one whose clean estimate is the image latent,
``(x - image) / sigma`` (`first_frame_velocity`), so a sample from any noise ends on the image latent
(where diffusers puts it back after the loop), and every latent of an inversion keeps it there.

Refused with a message: Wan 2.1 first-last-frame folders (``pos_embed_seq_len``: two images), which
this version leaves for later.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import math
from pathlib import Path

import torch

from .. import editmask, errors, flow, solver, video
from ..family import MEASURED_RECIPES, EditRecipe, Guidance
from . import configcheck, loading, wan_attention
from .loading import check_tiled_size, dtype_kwarg, on_device, should_tile, vae_memory_mode

TRANSFORMER_CLASS = "WanTransformer3DModel"
SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
I2V_SUBFOLDERS = ("image_encoder", "image_processor")  # of folders whose transformer takes CLIP tokens
TEXT_LEN = 512  # WanPipeline's max_sequence_length: prompts are padded to it (its I2V attention assumes it)
GREY = 0.5  # the frames after the first in the I2V condition clip (0 in the VAE's -1..1)


# ----------------------------------------------------------------------------- folders

def is_model_folder(path) -> bool:
    """A folder counts when ``transformer/config.json`` names WanTransformer3DModel."""
    return loading.names_class(path, "transformer/config.json", TRANSFORMER_CLASS)


def find_model_folders(roots) -> dict[str, Path]:
    """Wan folders directly under each root, keyed by folder name (first root wins)."""
    return loading.find_model_folders(roots, is_model_folder, check_model_folder)


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
    configs = configcheck.check_configs(path, SPEC)  # every field's type and range first
    tcfg = loading.read_json(path / "transformer" / "config.json")
    check_experts(path, tcfg, folder_index(path))
    if tcfg.get("pos_embed_seq_len"):
        raise errors.InputError(
            f"{path.name!r} is a Wan first-last-frame folder (pos_embed_seq_len {tcfg['pos_embed_seq_len']!r}: CLIP "
            "tokens of two images); this version of the pack conditions on the first frame only",
            "Use a Wan text-to-video or image-to-video folder (Wan2.1-I2V-14B-480P-Diffusers).")
    missing = [s for s in I2V_SUBFOLDERS if not (path / s).is_dir()]
    if tcfg.get("image_dim") and missing:
        raise errors.InputError(
            f"{path.name!r} is a Wan image-to-video folder (image_dim {tcfg['image_dim']}) without "
            f"{', '.join(missing)}", "Download the whole diffusers repository (for example "
            "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers): its CLIP image encoder and image processor are needed.")
    check_channels(path, tcfg)
    configcheck.check_weights(path, SPEC, configs)  # then the sizes against the weights' headers


# ----------------------------------------------------------------------------- what a folder's configs may say

_c, _n, _F = configcheck.count, configcheck.number, configcheck.Field
TRANSFORMER_FIELDS = {  # diffusers' defaults where a key may be left out
    "patch_size": _F("ints", 1, 64, length=3, default=[1, 2, 2]), "num_attention_heads": _c(1, 1024, default=40),
    "attention_head_dim": _c(1, 4096, default=128), "in_channels": _c(1, 4096, default=16),
    "out_channels": _c(1, 4096, null=True, default=16), "text_dim": _c(1, 65536, default=4096),
    "freq_dim": _c(1, 65536, default=256), "ffn_dim": _c(1, 1 << 20, default=13824),
    "num_layers": _c(1, 1024, default=40), "cross_attn_norm": _F("bool"), "eps": _n(0, 1, positive=True),
    "image_dim": _c(1, 65536, null=True, default=None), "added_kv_proj_dim": _c(1, 65536, null=True),
    "rope_max_seq_len": _c(1, 65536, default=1024), "pos_embed_seq_len": _c(1, 1 << 20, null=True),
    "qk_norm": _F("str", null=True),
}
VAE_FIELDS = {
    "base_dim": _c(1, 4096, default=96), "z_dim": _c(1, 1024, default=16), "dim_mult": _F("ints", 1, 64),
    "num_res_blocks": _c(1, 64), "in_channels": _c(1, 64, default=3), "out_channels": _c(1, 64),
    "latents_mean": _F("numbers", -1e4, 1e4, length="z_dim"),
    "latents_std": _F("numbers", None, 1e4, length="z_dim", positive=True),
    "scale_factor_spatial": _c(1, 64, default=8), "scale_factor_temporal": _c(1, 64, default=4),
    "patch_size": _c(1, 16, null=True, default=None),
}
SCHEDULER_FIELDS = {**configcheck.SCHEDULER_FIELDS, "flow_shift": _n(None, 1000, positive=True, null=True),
                    "shift": _n(None, 1000, positive=True, null=True)}


def _transformer_promises(part: str, t: dict) -> list:
    inner, patch = t["num_attention_heads"] * t["attention_head_dim"], tuple(t["patch_size"])
    out = [configcheck.Blocks(part, "blocks.", t["num_layers"], "num_layers"),
           configcheck.Promise(part, "patch_embedding.weight", (inner, t["in_channels"], *patch),
                               "num_attention_heads x attention_head_dim, in_channels, patch_size"),
           configcheck.Promise(part, "condition_embedder.text_embedder.linear_1.weight", (inner, t["text_dim"]),
                               "text_dim"),
           configcheck.Promise(part, "condition_embedder.time_embedder.linear_1.weight", (inner, t["freq_dim"]),
                               "freq_dim"),
           configcheck.Promise(part, "blocks.0.ffn.net.0.proj.weight", (t["ffn_dim"], inner), "ffn_dim"),
           configcheck.Promise(part, "proj_out.weight", ((t["out_channels"] or t["in_channels"]) * math.prod(patch),
                                                         inner), "out_channels x patch_size")]
    return out


def _promises(cfg: dict) -> list:
    out = []
    for part in ("transformer", "transformer_2"):
        if f"{part}/config.json" in cfg:
            out += _transformer_promises(part, cfg[f"{part}/config.json"])
    v = cfg.get("vae/config.json")
    if v is not None:
        out += [configcheck.Promise("vae", "encoder.conv_in.weight", (v["base_dim"], v["in_channels"], 3, 3, 3),
                                    "base_dim, in_channels"),
                configcheck.Promise("vae", "post_quant_conv.weight", (v["z_dim"], v["z_dim"], 1, 1, 1), "z_dim")]
    return out + configcheck.t5_promises(cfg.get("text_encoder/config.json", {})) \
        + configcheck.clip_promises(cfg.get("image_encoder/config.json", {}))


def _cross_checks(cfg: dict, refuse) -> None:
    v, t = cfg.get("vae/config.json"), cfg.get("transformer/config.json")
    if v is not None and "dim_mult" in v:
        spatial = 2 ** (len(v["dim_mult"]) - 1) * (v["patch_size"] or 1)
        if v["scale_factor_spatial"] != spatial:
            refuse(f"vae/config.json: scale_factor_spatial is {v['scale_factor_spatial']}, but its dim_mult "
                   f"({len(v['dim_mult'])} levels) and patch_size make a spatial compression of {spatial}")
    for key in ("latents_mean", "latents_std"):
        if v is not None and key not in v and v["z_dim"] != 16:
            refuse(f"vae/config.json has no {key} for its {v['z_dim']} latent channels (the default has 16)")
    text = cfg.get("text_encoder/config.json", {}).get("d_model")
    if t is not None and text is not None and text != t["text_dim"]:
        refuse(f"transformer/config.json: text_dim {t['text_dim']} differs from the text encoder's d_model {text}")


SPEC = configcheck.Spec(
    files={"model_index.json": {"expand_timesteps": _F("bool")}, "transformer/config.json": TRANSFORMER_FIELDS,
           "transformer_2/config.json": TRANSFORMER_FIELDS, "vae/config.json": VAE_FIELDS,
           "text_encoder/config.json": configcheck.T5_FIELDS, "image_encoder/config.json": configcheck.CLIP_FIELDS,
           "scheduler/scheduler_config.json": SCHEDULER_FIELDS},
    promises=_promises, extra=_cross_checks)


def folder_index(path: Path) -> dict:
    return loading.read_json(path / "model_index.json") if (path / "model_index.json").is_file() else {}


EXPERT_KEYS = ("in_channels", "out_channels", "patch_size", "num_layers", "num_attention_heads", "attention_head_dim",
               "text_dim", "image_dim", "added_kv_proj_dim", "rope_max_seq_len")  # must agree between the experts


def check_experts(path: Path, tcfg: dict, index: dict) -> None:
    """A Wan 2.2 two-expert folder: ``transformer_2`` beside ``transformer``, a ``boundary_ratio`` in
    (0, 1) to switch at, and experts of one shape; and ``expand_timesteps`` only on a transformer that
    takes the latent alone (TI2V-5B)."""
    second, ratio = index.get("transformer_2"), index.get("boundary_ratio")
    named = isinstance(second, list) and second[0] is not None
    if named or (path / "transformer_2").is_dir():
        if not (path / "transformer_2" / "config.json").is_file():
            raise errors.InputError(f"{path.name!r}: model_index.json names a 'transformer_2' (Wan 2.2 low-noise "
                                    "expert) that the folder does not hold",
                                    "Download the whole diffusers repository (for example "
                                    "Wan-AI/Wan2.2-T2V-A14B-Diffusers), both transformers.")
        if not (errors.is_number(ratio) and 0 < ratio < 1):
            raise errors.InputError(f"{path.name!r} holds two Wan experts but its boundary_ratio is "
                                    f"{errors.describe_value(ratio)}, not a number between 0 and 1",
                                    "Use the folder's own model_index.json (Wan 2.2 A14B: 0.875 T2V, 0.9 I2V).")
        other = loading.read_json(path / "transformer_2" / "config.json")
        bad = [k for k in EXPERT_KEYS if tcfg.get(k) != other.get(k)]
        if bad:
            raise errors.InputError(f"{path.name!r}: the two experts differ in {bad[0]} ({tcfg.get(bad[0])!r} in "
                                    f"transformer, {other.get(bad[0])!r} in transformer_2)",
                                    "The two transformers of this folder do not belong together.")
    elif ratio is not None:
        raise errors.InputError(f"{path.name!r} has a boundary_ratio ({ratio!r}) but no 'transformer_2' to switch to",
                                "Download the whole two-expert folder, or remove boundary_ratio from model_index.json.")
    vcfg = loading.read_json(path / "vae" / "config.json")
    if index.get("expand_timesteps") and int(tcfg.get("in_channels", 16)) != int(vcfg.get("z_dim", 16)):
        raise errors.InputError(f"{path.name!r}: expand_timesteps (Wan 2.2 TI2V's first frame in place of the first "
                                f"latent frame) with a transformer of in_channels {tcfg.get('in_channels')!r} that "
                                "also takes channel conditioning", "Use the folder's own model_index.json.")


def check_channels(path: Path, tcfg: dict) -> None:
    """From the configs, before any weight is read: the transformer takes the latent alone
    (text-to-video) or the latent, the first-frame mask and the first frame's latent (image-to-video),
    and CLIP tokens as wide as the folder's image encoder."""
    vcfg = loading.read_json(path / "vae" / "config.json")  # a key left out takes diffusers' default
    c, t, got = int(vcfg.get("z_dim", 16)), int(vcfg.get("scale_factor_temporal", 4)), int(tcfg.get("in_channels", 16))
    if got not in (c, 2 * c + t):
        raise errors.InputError(
            f"{path.name!r}: transformer in_channels {got} fit neither text-to-video ({c}, the VAE's latent channels) "
            f"nor image-to-video ({2 * c + t} = latent {c} + mask {t} + first frame {c})",
            "The transformer and the VAE of this folder do not belong together.")
    width = tcfg.get("image_dim")
    clip = loading.read_json(path / "image_encoder" / "config.json").get("hidden_size") if width else None
    if width and clip != width:
        raise errors.InputError(f"{path.name!r}: the image encoder's width {clip!r} differs from the transformer's "
                                f"image_dim {width}", "The image encoder of this folder does not belong to its "
                                "transformer.")


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
    image_encoder: torch.nn.Module | None = None  # image-to-video models with CLIP tokens (image_dim)
    image_processor: object = None
    reference: object = None
    family: str = "wan"
    transformer_2: torch.nn.Module | None = None  # Wan 2.2 A14B: the low-noise expert
    boundary_ratio: float | None = None  # with transformer_2: where the experts switch
    expand_timesteps: bool = False  # Wan 2.2 TI2V: per-token timesteps, the first frame's latent in place

    @property
    def experts(self) -> tuple[torch.nn.Module, ...]:
        """The denoising networks, high noise first."""
        return (self.transformer,) if self.transformer_2 is None else (self.transformer, self.transformer_2)

    @property
    def boundary(self) -> float | None:
        """The model time where the low-noise expert takes over (None: one network)."""
        if self.transformer_2 is None:
            return None
        return float(self.boundary_ratio) * int(self.scheduler_config.get("num_train_timesteps", 1000))

    def expert(self, t: float) -> torch.nn.Module:
        return self.experts[expert_index(t, self.boundary)]

    @property
    def first_frame_in_place(self) -> bool:
        """Wan 2.2 TI2V: image-to-video puts the first frame's latent in place of the first latent frame."""
        return self.expand_timesteps and not self.is_i2v

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

    @property
    def is_i2v(self) -> bool:
        """An image-to-video model: its transformer takes the first-frame condition on channels."""
        return int(self.transformer.config.in_channels) != self.latent_channels

    @property
    def takes_first_frame(self) -> bool:
        """Whether a first frame conditions this model (always for I2V, optionally for TI2V)."""
        return self.is_i2v or self.first_frame_in_place

    @property
    def condition_channels(self) -> int:
        """Channels of the I2V condition: the first-frame mask (one per frame of the temporal factor) and
        the first frame's latent (0 for text-to-video)."""
        return self.temporal_factor + self.latent_channels if self.is_i2v else 0

    def describe(self) -> str:
        c = self.transformer.config
        kind = "I2V" if self.is_i2v else "TI2V" if self.first_frame_in_place else "T2V"
        experts = ""
        if self.transformer_2 is not None:
            experts = (f", two experts (high noise at model time >= {self.boundary:g}, boundary_ratio "
                       f"{self.boundary_ratio:g}; "
                       + ("offloaded: only the expert in use on the device)" if self.offload_device != self.device
                          else "both on the device)"))
        return (f"{self.name}: Wan {kind}, {c.num_layers} blocks, {c.num_attention_heads} heads x {c.attention_head_dim}, "
                f"{self.latent_channels} latent channels, patch {list(self.patch_size)}, VAE {self.spatial_factor}x/"
                f"{self.temporal_factor}x, flow shift {self.flow_shift:g}, {str(self.dtype).replace('torch.', '')}"
                f"{experts}")


def expert_index(t: float, boundary: float | None) -> int:
    """0 (the high-noise expert) at model time ``t >= boundary``, else 1, compared in float32 as the
    diffusers pipelines compare their float32 timestep tensor with the boundary; 0 without a boundary."""
    if boundary is None:
        return 0
    return 0 if torch.tensor(float(t), dtype=torch.float32) >= torch.tensor(boundary, dtype=torch.float32) else 1


def fingerprint(path: Path, transformer, transformer_2=None, boundary_ratio=None, expand_timesteps=False) -> str:
    """The configs and the transformer's weights; a two-expert folder adds the second expert's and the
    boundary, a TI2V folder its per-token timesteps (a single-transformer Wan 2.1 folder's is unchanged)."""
    one = loading.fingerprint([path / sub / name for sub in ("transformer", "scheduler", "vae", *I2V_SUBFOLDERS)
                               for name in ("config.json", "scheduler_config.json", "preprocessor_config.json")],
                              transformer)
    if transformer_2 is None and not expand_timesteps:
        return one
    two = "" if transformer_2 is None else loading.fingerprint([path / "transformer_2" / "config.json"], transformer_2)
    return hashlib.sha256(f"{one}|{two}|{boundary_ratio!r}|{bool(expand_timesteps)}".encode()).hexdigest()[:16]


@loading.outside_inference_mode
def load(path, dtype: str = "fp32", device=None, offload_device=None, name: str | None = None) -> Wan:
    """Load a diffusers Wan text-to-video or image-to-video folder (Wan 2.2: with its two experts, or
    TI2V's per-token timesteps). Modules rest on `offload_device` and move to `device` for the stage
    that uses them. `from_pretrained` of the transformer needs `accelerate` (DESIGN fact 10)."""
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
    index = folder_index(path)
    transformer_2 = boundary_ratio = None
    if (path / "transformer_2").is_dir():
        transformer_2 = WanTransformer3DModel.from_pretrained(
            path / "transformer_2", **dtype_kwarg(diffusers.__version__, (0, 42), torch_dtype))
        boundary_ratio = float(index["boundary_ratio"])
    expand = bool(index.get("expand_timesteps", False))
    vae = AutoencoderKLWan.from_pretrained(path / "vae", **dtype_kwarg(diffusers.__version__, (0, 42), torch_dtype))
    text_encoder = UMT5EncoderModel.from_pretrained(
        path / "text_encoder", **dtype_kwarg(transformers.__version__, (4, 56), torch_dtype))
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    scheduler_config = loading.read_json(path / "scheduler" / "scheduler_config.json")
    image_encoder = image_processor = None
    if transformer.config.image_dim:
        from transformers import CLIPImageProcessor, CLIPVisionModel
        image_encoder = CLIPVisionModel.from_pretrained(
            path / "image_encoder", **dtype_kwarg(transformers.__version__, (4, 56), torch_dtype))
        image_processor = CLIPImageProcessor.from_pretrained(path / "image_processor")
    for m in (transformer, transformer_2, vae, text_encoder, image_encoder):
        if m is not None:
            m.eval().requires_grad_(False).to(offload_device)
    return Wan(name or path.name, str(path), transformer, vae, text_encoder, tokenizer, scheduler_config,
               torch_dtype, device, offload_device,
               fingerprint(path, transformer, transformer_2, boundary_ratio, expand), image_encoder, image_processor,
               transformer_2=transformer_2, boundary_ratio=boundary_ratio, expand_timesteps=expand)


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
    loading.require_vae_memory(model, n, h, w, should_tile(model, h, w, tiling), "VAE-encoding")
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
    n = (latents.shape[1] - 1) * model.temporal_factor + 1
    loading.require_vae_memory(model, latents.shape[0] * n, h, w, should_tile(model, h, w, tiling), "VAE-decoding")
    mean, std = latent_stats(model)
    out = []
    with on_device(model.vae, model) as vae, vae_memory_mode(vae, should_tile(model, h, w, tiling)):
        for z in latents:  # one video at a time
            z = (z.unsqueeze(0).permute(0, 2, 1, 3, 4).float() * std + mean).to(model.device, model.dtype)
            frames = vae.decode(z).sample  # [1, 3, N, H, W], clamped to -1..1 by the VAE
            check_tiled_size(frames.shape[-2:], (h, w), "frames")
            out.append(((frames.float().cpu()[0] + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0))
    return torch.cat(out)


# ----------------------------------------------------------------------------- image-to-video

@dataclasses.dataclass(eq=False)
class ImageCondition:
    """What an image-to-video sample is conditioned on, from its first frame: `latents` ``[B, F, M + C,
    h, w]`` (the first-frame mask, M = the VAE's temporal factor, then the VAE latent of [first frame,
    grey frames], normalised), concatenated to the noisy latent on channels at every call, and
    `embeds` ``[B, N, D]`` (CLIP tokens; None for a transformer without ``image_dim``). Wan 2.2 TI2V:
    `latents` ``[B, 1, C, h, w]``, the first frame's normalised VAE latent, put in place of the first
    latent frame at every call, and no `embeds`. It rides with the latent as its image conditioning;
    `shape` is the latents' (what the pipeline compares)."""
    latents: torch.Tensor
    embeds: torch.Tensor | None

    @property
    def shape(self) -> torch.Size:
        return self.latents.shape

    def rows(self, n: int) -> "ImageCondition":
        """The conditioning for `n` rows of a call (CFG rows, reference rows): each of its B rows repeated."""
        reps = n // self.latents.shape[0]
        return ImageCondition(self.latents.repeat(reps, 1, 1, 1, 1),
                              None if self.embeds is None else self.embeds.repeat(reps, 1, 1))


@torch.no_grad()
def encode_image_condition(model: Wan, first_frame: torch.Tensor, latent_frames: int,
                           tiling: str = "auto") -> ImageCondition:
    """The I2V conditioning of a first frame (IMAGE ``[1, H, W, 3]``, already at the video's size) for a
    latent of `latent_frames` frames, as WanImageToVideoPipeline builds it (TI2V: the frame's latent)."""
    if model.first_frame_in_place:
        return ImageCondition(encode_video(model, first_frame[:1], tiling), None)
    n = (latent_frames - 1) * model.temporal_factor + 1
    clip = torch.cat([first_frame[:1], torch.full((n - 1, *first_frame.shape[1:]), GREY)])
    z = encode_video(model, clip, tiling)  # [1, F, C, h, w]
    mask = torch.zeros(1, latent_frames, model.temporal_factor, *z.shape[-2:])
    mask[:, 0] = 1.0
    embeds = None
    if model.image_encoder is not None:
        pixels = (first_frame[0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()  # what a PIL image gives
        inputs = model.image_processor(images=pixels, return_tensors="pt")
        with on_device(model.image_encoder, model) as enc:
            out = enc(pixel_values=inputs.pixel_values.to(model.device, model.dtype), output_hidden_states=True)
        embeds = out.hidden_states[-2].float().cpu()
    return ImageCondition(torch.cat([mask, z], dim=2), embeds)


def check_image_condition(model: Wan, image, latent: torch.Tensor) -> None:
    """An image-to-video model needs its first-frame conditioning, of the latent's frames and size;
    a text-to-video model takes none; TI2V takes none or one first-frame latent."""
    if model.first_frame_in_place:
        if image is None:
            return
        want = (1, model.latent_channels, *latent.shape[-2:])
        if not isinstance(image, ImageCondition) or image.embeds is not None or \
                tuple(image.latents.shape[1:]) != want or image.latents.shape[0] not in (1, latent.shape[0]):
            raise errors.InputError(f"{model.name} (Wan 2.2 TI2V) takes the first frame's latent [1 or B, "
                                    f"{', '.join(map(str, want))}] as its image conditioning, got "
                                    f"{describe_condition(image)}", "Encode the video with this model's VAE Encode "
                                    "node (it adds the first frame's latent).")
        return
    if not model.is_i2v:
        if image is not None:
            raise errors.InputError(f"the latent carries image-to-video conditioning, which {model.name} (Wan "
                                    "text-to-video) does not take", "Encode the video with this Wan model's VAE.")
        return
    if not isinstance(image, ImageCondition):
        raise errors.InputError(
            f"{model.name} is a Wan image-to-video model: the latent needs its first-frame conditioning, got "
            f"{'none' if image is None else type(image).__name__}",
            "Encode the video with this model's VAE Encode node (it adds the first frame's conditioning).")
    want = (latent.shape[1], model.condition_channels, *latent.shape[-2:])
    if tuple(image.latents.shape[1:]) != want or image.latents.shape[0] not in (1, latent.shape[0]):
        raise errors.InputError(f"the first-frame conditioning {tuple(image.latents.shape)} does not fit the latent "
                                f"{tuple(latent.shape)} (needs [1 or B, {', '.join(map(str, want))}])",
                                "Encode the video and its first frame with the same model and size.")
    width = model.transformer.config.image_dim
    if width and (image.embeds is None or image.embeds.shape[-1] != int(width)):
        raise errors.InputError(f"{model.name} takes CLIP image tokens of width {width}, the conditioning has "
                                f"{'none' if image.embeds is None else image.embeds.shape[-1]}",
                                "Encode the video with this model's VAE Encode node.")


def describe_condition(image) -> str:
    if isinstance(image, ImageCondition):
        return f"latents {tuple(image.latents.shape)}" + ("" if image.embeds is None else " with CLIP tokens")
    return type(image).__name__


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


def transformer_call(model: Wan, x: torch.Tensor, text: torch.Tensor, t: float,
                     image: ImageCondition | None = None) -> torch.Tensor:
    """One transformer evaluation on latent rows `x` ``[R, F, C, h, w]`` at model time `t` (1000 sigma)
    with text rows and, for image-to-video, the first-frame conditioning (the same for every row of a
    video); returns the velocity ``[R, F, C, h, w]`` in float32 or wider, on the compute device."""
    rows, image_tokens = x.shape[0], None
    if image is not None:
        image = image.rows(rows)
        if model.first_frame_in_place:  # TI2V: the first frame's latent in place of the first latent frame
            x = torch.cat([image.latents.to(x.dtype), x[:, 1:]], dim=1)
        else:
            x = torch.cat([x, image.latents.to(x.dtype)], dim=2)
            image_tokens = None if image.embeds is None else image.embeds.to(model.device, model.dtype)
    inp = x.to(model.device, model.dtype).permute(0, 2, 1, 3, 4)  # the transformer's [B, C, F, H, W]
    if model.expand_timesteps:
        timestep = token_timesteps(model, x.shape, t, image is not None).to(model.device).expand(rows, -1)
    else:
        timestep = torch.full((rows,), float(t), device=model.device, dtype=torch.float32)
    network = loading.use(model.expert(t), model.experts, model)
    out = network(hidden_states=inp, timestep=timestep, encoder_hidden_states=text.to(model.device, model.dtype),
                  encoder_hidden_states_image=image_tokens, return_dict=False)[0]
    return out.permute(0, 2, 1, 3, 4).to(torch.promote_types(out.dtype, torch.float32))


def token_timesteps(model: Wan, shape, t: float, first_frame: bool) -> torch.Tensor:
    """``[1, tokens]`` float32 model times of a TI2V call on a latent of `shape` ``[R, F, C, h, w]``: t on
    every patch, 0 on the first latent frame's when it is the first frame's latent (clean), as
    WanImageToVideoPipeline samples its frame mask at the patch grid."""
    p_t, p_h, p_w = model.patch_size
    mask = torch.ones(shape[1], *shape[-2:], dtype=torch.float32)
    if first_frame:
        mask[0] = 0.0
    return (mask[::p_t, ::p_h, ::p_w] * torch.tensor(float(t), dtype=torch.float32)).flatten()[None]


def first_frame_velocity(x: torch.Tensor, out: torch.Tensor, image: ImageCondition, sigma: float) -> torch.Tensor:
    """TI2V with a first frame: the first latent frame's velocity is the one whose clean estimate
    ``x - sigma v`` is the image latent, so that frame reaches it at sigma 0 and an inversion from it
    stays on it (the transformer's own output there belongs to no token it denoises)."""
    out = out.clone()
    target = image.rows(x.shape[0]).latents[:, 0].to(out.dtype)
    out[:, 0] = (x[:, 0].to(out.dtype) - target) / sigma
    return out


def make_denoiser(model: Wan, cond: Conditioning, guidance: Guidance, grid: solver.Grid, negative=None,
                  attention=None, image: ImageCondition | None = None):
    """``denoise(x, i)`` for step i of the flow grid: the CFG rows batched into one call of the expert
    of the step's model time (`expert_index`), combined ``u + s (c - u)`` with that expert's scale
    (`Guidance.second` for the low-noise one); the same callable serves sampling and inversion.
    `image`: an image-to-video model's first-frame conditioning."""
    use_cfg = guidance.uses_cfg

    def denoise(x: torch.Tensor, i: int) -> torch.Tensor:
        t = grid.timesteps[i]
        text = cfg_rows(cond, use_cfg, x.shape[0], None if negative is None else negative(t))
        ctx = attention(i, x) if attention is not None else None
        with ctx or contextlib.nullcontext():
            out = transformer_call(model, torch.cat([x, x]) if use_cfg else x, text, t, image)
        if use_cfg:
            u, c = out.chunk(2)
            scale = guidance.scale if expert_index(t, model.boundary) == 0 else guidance.second_scale
            out = u + scale * (c - u)
        out = out.cpu()
        if image is not None and model.first_frame_in_place:
            out = first_frame_velocity(x, out, image, grid.sigmas[i])
        return out

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
    shifted sigma grid, UMT5 text (and, for image-to-video, CLIP tokens) through cross-attention, the
    blocks' self-attention (3-D RoPE, video tokens only) for the reference. The image conditioning
    that rides with an I2V latent is an `ImageCondition`."""
    name = "wan"
    display_name = "Wan"
    own_nodes = 'For Wan use Encode Text (Wan), Flow Invert (Wan, exact) and Flow Sample (Wan), or Reference Attention + Guided Sample.'  # the hint when one of its models reaches another family's node
    trajectory_version = 4  # 3 is taken by prompt-tuned files; older packs refuse Wan files
    text_conditioned = True
    optimisable = False  # null-text / prompt-tuning embeddings: CogVideoX's
    model_conditioned = False  # model_conds belong to native trajectories
    grid_kind = flow.KIND
    solver_choice = True

    def networks(self, model: Wan) -> tuple[torch.nn.Module, ...]:
        return model.experts

    def encode_frames(self, model, images, frames, size, width, height, tiling):
        """4k+1 frames (the VAE's temporal factor), fitted to the size grid; 0 keeps the video's size,
        rounded down to a multiple the model takes."""
        clip, note_frames = video.fit_frame_count(images, model.temporal_factor, frames)
        m = model.size_multiple
        h, w = images.shape[1:3]
        clip, note_size = video.fit_size(clip, height or max(m, h // m * m), width or max(m, w // m * m), m, size)
        z = encode_video(model, clip, tiling)
        image = encode_image_condition(model, clip[:1], z.shape[1], tiling) if model.takes_first_frame else None
        if image is not None and model.first_frame_in_place:  # TI2V: the latent the sampler ends on
            z[:, :1] = image.latents
        return z, image, 0, clip, f"{note_frames}; {note_size}"

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
        check_image_condition(model, image_latents, latent)

    def check_guidance(self, guidance):
        guidance.check_one_scale(self.display_name, experts=2)  # a one-network model refuses it in `denoiser`
        if guidance.dynamic:
            raise errors.InputError("dynamic_cfg is CogVideoX's guidance schedule; Wan takes one scale",
                                    "Turn dynamic_cfg off for Wan.")

    def denoiser(self, model, cond, guidance, grid, image_latents=None, negative=None, attention=None, positive=None):
        if positive is not None:
            raise errors.InputError("prompt tuning is CogVideoX's; a Wan trajectory carries no tuned embeddings",
                                    "Set tuned_eta to 1 for Wan.")
        guidance.check_one_scale(self.display_name, len(model.experts))  # before any model call
        return make_denoiser(model, cond, guidance, grid, negative, attention, image_latents)

    # -- trajectories
    def trajectory_fields(self, model, cond, guidance, grid, image_latents):
        image = dict(image_latents=image_latents.latents.float(), image_embeds=image_latents.embeds) \
            if image_latents is not None else {}
        second = {} if guidance.second is None else dict(conditioning={"guidance_2": float(guidance.second)})
        return dict(prompt=cond.prompt, negative_prompt=cond.negative_prompt, embeds=cond.embeds,
                    negative_embeds=cond.negative_embeds, guidance=float(guidance.scale), dynamic_cfg=False,
                    **image, **second)

    def trajectory_guidance(self, traj):
        return Guidance(traj.guidance, second=traj.conditioning.get("guidance_2"))

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
        if hasattr(model, "is_i2v"):
            try:
                check_image_condition(model, self.latent_extras(traj)[0], lat[0])
            except errors.InputError as err:
                refuse(err.problem)

    def validate_trajectory(self, traj, refuse):
        sig = traj.sigmas
        if sig is None or len(sig) != len(traj.timesteps) + 1:
            refuse(f"a Wan trajectory needs {len(traj.timesteps) + 1} sigmas (one per latent), "
                   f"got {'none' if sig is None else len(sig)}")
        if any(not a > b for a, b in zip(sig, sig[1:])) or sig[-1] != 0 or sig[0] > 1:
            refuse(f"the sigmas {sig[:2]}...{sig[-2:]} do not fall from at most 1 to 0")
        lat, image, tokens = traj.latents, traj.image_latents, traj.image_embeds
        channels = image is not None and image.dim() == 5 and (
            (image.shape[1] == lat.shape[2] and image.shape[2] > lat.shape[3])  # I2V: mask and latent on channels
            or (image.shape[1] == 1 and image.shape[2] == lat.shape[3]))  # TI2V: the first frame's latent
        if image is not None and (not channels or image.shape[0] not in (1, lat.shape[1])
                                  or image.shape[-2:] != lat.shape[-2:]):
            refuse(f"image_latents {tuple(image.shape)} must be [1 or B, F, mask + C, H, W] (I2V) or [1 or B, 1, C, H, "
                   f"W] (TI2V) for latents {tuple(lat.shape[1:])}")
        second = traj.conditioning.get("guidance_2")
        if second is not None and not (errors.is_number(second) and second >= 1):
            refuse(f"conditioning.guidance_2 {errors.describe_value(second)} is not a number >= 1")
        if tokens is not None and (tokens.dim() != 3 or image is None or tokens.shape[0] != image.shape[0]):
            refuse(f"image_embeds {tuple(tokens.shape)} must be [B, N, D] and come with image_latents of B rows")

    def trajectory_summary(self, traj):
        return dict(sigma_max=traj.sigmas[0], sigma_min=min(s for s in traj.sigmas if s > 0),
                    flow_shift=traj.scheduler_config.get("shift", traj.scheduler_config.get("flow_shift")))

    def step_place(self, traj, i):
        return f"sigma {traj.sigmas[i]:.4g}"

    def latent_extras(self, traj):
        if traj.image_latents is None:
            return None, 0
        return ImageCondition(traj.image_latents.float(), None if traj.image_embeds is None
                              else traj.image_embeds.float()), 0

    def first_frame_latents(self, model, latent, first_frame):
        """An edited first frame, fitted to the latent's size, as the conditioning of an image-to-video
        sample (the reference passes keep the source's)."""
        if first_frame is None:
            return None
        if not model.takes_first_frame:
            raise errors.InputError(f"{model.name} is a text-to-video model: it takes no first frame",
                                    "Disconnect first_frame, or load a Wan image-to-video model.")
        first_frame = video.check_images(first_frame, "first_frame")
        h, w = (s * model.spatial_factor for s in latent.shape[-2:])
        frame, _ = video.fit_size(first_frame[:1], h, w, model.size_multiple, "resize and crop")
        return encode_image_condition(model, frame, latent.shape[1])

    def edit_recipe(self, model):
        # the first frame on channels (I2V): session 23's rule K; in place (TI2V): nothing measured, the default chain
        if model.first_frame_in_place:
            return EditRecipe()
        return MEASURED_RECIPES["Wan image-to-video" if model.is_i2v else "Wan text-to-video"]

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
        return tuple(wan_attention.processors(network, layers) for network in model.experts)

    def edit_mask_tokens(self, model, traj, cond):
        """The edited prompt's tokens not in the source prompt (one row per video): the cross-attention
        probe (`wan_attention.TextProbeProcessor`) weighs the image queries' attention by them."""
        return editmask.prompt_tokens(lambda text: model.tokenizer(text, add_special_tokens=True).input_ids,
                                      traj, cond, model.max_text_length)

    def patch_grid(self, model):
        return tuple(model.patch_size)

    def reference_call(self, model, traj, grid, cond, guidance, options, per_cfg_row, negative, positive=None):
        """The reference pass: the trajectory latent through the same transformer with the source prompt,
        one row per video, or, with `per_cfg_row`, [source negative x B, source prompt x B]; with
        reference_conditioning "edit" (the published recipe) the prompts being sampled, per CFG row.
        Image-to-video: always the source's first-frame conditioning."""
        source_image = self.latent_extras(traj)[0]

        def call(ref: torch.Tensor, i: int):
            t, b = grid.timesteps[i], ref.shape[0]
            if options.reference_text == "source":
                text = cfg_rows(self.source_conditioning(traj), per_cfg_row, b)
            else:
                text = cfg_rows(cond, guidance.uses_cfg, b, None if negative is None else negative(t))
            return transformer_call(model, ref.repeat(text.shape[0] // b, 1, 1, 1, 1), text, t, source_image)
        return call


FAMILY = WanFamily()
