"""Plumbing every model family shares: diffusers folders (configs, the model-folder scan), dtypes,
fingerprints, moving a module to the compute device for one stage, the VAE memory modes. No family
lives here."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Iterable

import torch

from .. import budget, errors

log = logging.getLogger("vidinv")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------- folders

def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def config_class(cfg: Path) -> str | None:
    """``_class_name`` of a model config file; None when there is no such file. A file that is
    there but cannot be read, or is not a JSON object, raises (OSError / ValueError)."""
    if not cfg.is_file():
        return None
    try:
        data = read_json(cfg)
    except ValueError as err:
        raise ValueError(f"{cfg.parent.name}/{cfg.name} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{cfg.parent.name}/{cfg.name} is {errors.json_kind(data)}, not a JSON object")
    return data.get("_class_name")


def names_class(path, config: str, class_name: str) -> bool:
    """Whether the config file `config` (relative to the folder) names `class_name`."""
    return config_class(Path(path) / config) == class_name


@functools.lru_cache(maxsize=1024)
def skip_folder(path: str, reason: str) -> None:
    """Log once (per folder and reason) that a folder was left out of the model list."""
    log.warning("vidinv: skipped model folder %s: %s", path, reason)


@functools.lru_cache(maxsize=1024)
def refused_folder(path: str, reason: str) -> None:
    """Log once (per folder and reason) that a listed folder will be refused when loaded."""
    log.warning("vidinv: model folder %s will be refused when loaded: %s", path, reason)


def find_model_folders(roots: Iterable, accept: Callable[[Path], bool],
                       check: Callable[[Path], None] | None = None) -> dict[str, Path]:
    """Model folders directly under each root for which `accept` holds, keyed by folder name (first
    root wins). A folder (or root) that cannot be read, whatever the reason, is skipped and logged
    once: one broken download must not take the loader away from every other model. `check` (the
    family's folder check, configs against their weights) runs on each accepted folder; a folder it
    refuses stays listed, so choosing it shows the check's message, and the reason is logged once."""
    found: dict[str, Path] = {}
    for root in roots:
        root = Path(root)
        try:
            children = sorted(root.iterdir()) if root.is_dir() else []
        except Exception as err:  # noqa: BLE001 - any unreadable root is skipped, never fatal
            skip_folder(str(root), f"{type(err).__name__}: {err}")
            continue
        for child in children:
            try:
                if child.name not in found and child.is_dir() and accept(child):
                    found[child.name] = child
                    if check is not None:
                        try:
                            check(child)
                        except errors.InputError as err:
                            refused_folder(str(child), str(err))
            except Exception as err:  # noqa: BLE001 - any unreadable folder is skipped, never fatal
                skip_folder(str(child), f"{type(err).__name__}: {err}")
    return found


def readable_check(check, path: Path, what: str):
    """``check(path)``, with an unreadable or malformed config file refused as bad input."""
    try:
        return check(path)
    except (OSError, ValueError) as err:
        raise errors.InputError(f"{path.name!r}: {what} cannot be read ({err})",
                                "Download the model folder again.") from err


def check_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise errors.InputError(f"precision {dtype!r} is not one of {', '.join(DTYPES)}", "Pick fp32, bf16 or fp16.")
    return DTYPES[dtype]


def dtype_kwarg(version: str, renamed_in: tuple[int, int], dtype: torch.dtype) -> dict:
    """diffusers and transformers renamed ``torch_dtype`` to ``dtype``; pass the one this version
    understands (no deprecation warnings on new versions, still working on old ones)."""
    major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    return {"dtype": dtype} if major_minor >= renamed_in else {"torch_dtype": dtype}


def fingerprint(configs: Iterable[Path], network: torch.nn.Module) -> str:
    """Identifies a model cheaply: its config files (those that exist) and a few bytes of a few
    weights of its denoising network."""
    h = hashlib.sha256()
    for f in configs:
        if f.is_file():
            h.update(json.dumps({k: v for k, v in read_json(f).items() if not k.startswith("_")},
                                sort_keys=True).encode())
    params = list(network.named_parameters())
    for name, p in params[:2] + params[-2:]:
        h.update(name.encode())
        h.update(p.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def on_device(module: torch.nn.Module, model):
    """Run `module` on ``model.device``; move it back to ``model.offload_device`` afterwards. The
    moves run outside inference mode (`outside_inference_mode`), so a model moved inside a ComfyUI
    node keeps ordinary weights."""
    with torch.inference_mode(False):
        module.to(model.device)
    try:
        yield module
    finally:
        if model.offload_device != model.device:
            with torch.inference_mode(False):
                module.to(model.offload_device)


@contextlib.contextmanager
def networks_on_device(modules, model):
    """The denoising networks of one sampling or inversion loop on ``model.device``. One network moves
    there for the loop. Of several (experts chosen by timestep), when the model offloads, only the
    one in use is on the device: the family's denoiser calls `use` before each call. Every network
    is back on ``model.offload_device`` afterwards."""
    modules = tuple(modules)
    if len(modules) == 1:
        with on_device(modules[0], model):
            yield
        return
    try:
        yield
    finally:
        if model.offload_device != model.device:
            with torch.inference_mode(False):
                for m in modules:
                    m.to(model.offload_device)


def use(module: torch.nn.Module, modules, model) -> torch.nn.Module:
    """`module` (one of the networks `modules`) on ``model.device`` for the next call; when the model
    offloads, the others go back to ``model.offload_device`` first, so one network at a time takes
    device memory."""
    with torch.inference_mode(False):
        if model.offload_device != model.device:
            for m in modules:
                if m is not module:
                    m.to(model.offload_device)
        module.to(model.device)
    return module


# ----------------------------------------------------------------------------- inference mode

def outside_inference_mode(fn):
    """Run `fn` with inference mode off. ComfyUI runs every node inside ``torch.inference_mode()``,
    where each tensor made (a loaded weight, a weight moved to another device) is an *inference
    tensor*: autograd refuses to save it for a backward pass, and it cannot be updated in place
    outside inference mode later. Loaders are wrapped in this so a model loaded by a node has
    ordinary weights, usable by the optimising nodes (null-text, prompt tuning)."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with torch.inference_mode(False):
            return fn(*args, **kwargs)
    return wrapped


def ordinary(t: torch.Tensor | None) -> torch.Tensor | None:
    """`t` as an ordinary tensor (a copy where it is an inference tensor, else `t` itself); call it
    outside inference mode, where the copy is ordinary."""
    return t.clone() if t is not None and t.is_inference() else t


def ordinary_weights(module: torch.nn.Module) -> int:
    """Replace any inference-tensor parameter or buffer of `module` by an ordinary copy with the
    same values (the values, dtype, device and requires_grad are kept; a weight shared between
    submodules stays shared), one tensor at a time, so autograd can run through the module.
    Returns how many tensors were replaced (0 for a module loaded by this pack's loaders)."""
    replaced: dict[int, torch.Tensor] = {}
    with torch.inference_mode(False):
        for sub in module.modules():
            for table, make in ((sub._parameters, lambda p: torch.nn.Parameter(p.clone(), p.requires_grad)),
                                (sub._buffers, lambda b: b.clone())):
                for name, t in table.items():
                    if t is not None and t.is_inference():
                        if id(t) not in replaced:
                            replaced[id(t)] = make(t)
                        table[name] = replaced[id(t)]
    return len(replaced)


# ----------------------------------------------------------------------------- VAE memory modes

@contextlib.contextmanager
def vae_memory_mode(vae, tiling: bool, slicing: bool = True):
    """Switch the VAE's tiling/slicing for one call and restore the user's settings after."""
    saved = (vae.use_tiling, vae.use_slicing)
    vae.use_tiling, vae.use_slicing = tiling, slicing
    try:
        yield vae
    finally:
        vae.use_tiling, vae.use_slicing = saved


AUTO_TILE_PIXELS = 384 * 384  # frames larger than this are tiled by default (CogVideoX's 720x480 is)


def should_tile(model, height: int, width: int, mode: str) -> bool:
    """'auto' tiles large frames (more than 384x384 pixels) that are also larger than the VAE's
    own tile size; 'on' and 'off' force it."""
    if mode in ("on", "off"):
        return mode == "on"
    larger_than_tile = height > model.vae.tile_sample_min_height or width > model.vae.tile_sample_min_width
    return larger_than_tile and height * width > AUTO_TILE_PIXELS


def check_tiled_size(got, expected, what: str) -> None:
    if tuple(got) != tuple(expected):
        raise errors.InputError(f"VAE tiling returned {what} of size {tuple(got)} instead of {tuple(expected)} "
                                "(the VAE's tiles are too small for this frame size)", "Set tiling to 'off' or 'auto'.")


VAE_FRAMES_AT_ONCE = 8  # the video VAEs encode and decode a few frames at a time (CogVideoX 8, Wan 4, SVD 14 a chunk)


def require_vae_memory(model, frames: int, height: int, width: int, tiled: bool, what: str) -> None:
    """Refuse, before the VAE runs, frames whose VAE work exceeds the memory budget (`vidinv.budget`):
    the frames in -1..1 and on the device, and a few activation maps of the VAE's first level at full
    resolution (at the tile's when tiled) for the frames it takes at once."""
    cfg = dict(model.vae.config)
    channels = int(cfg.get("base_dim") or (cfg.get("block_out_channels") or [128])[0])
    tile = (getattr(model.vae, "tile_sample_min_height", height), getattr(model.vae, "tile_sample_min_width", width))
    itemsize = torch.finfo(model.dtype).bits // 8
    need = 2 * budget.frames_bytes(frames, height, width) + budget.vae_bytes(
        min(frames, VAE_FRAMES_AT_ONCE), height, width, channels, itemsize, tiled, tile)
    budget.require(need, f"{what} {frames} frames of {width}x{height}",
                   "Choose a smaller width and height or fewer frames, or set tiling to 'on'", model.device)
