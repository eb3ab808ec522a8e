"""The one place that talks to ComfyUI (comfy.*, folder_paths, server). Everything here has a
plain-Python fallback so the library, the nodes and the tests run without ComfyUI."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from ..vidinv.errors import InputError, shorten
from ..vidinv.hooks import Hooks

try:  # inside a ComfyUI process
    import comfy.model_management as _mm
    import comfy.utils as _utils
    import folder_paths as _fp
except ImportError:  # pytest, scripts
    _mm = _utils = _fp = None

IN_COMFY = _fp is not None
if IN_COMFY:  # the memory budget (vidinv.budget) follows what ComfyUI's model management says is free
    from ..vidinv import budget as _budget
    _budget.free_memory = lambda device: int(_mm.get_free_memory(torch.device(device or "cpu")))
PACK_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_MODELS = {"tiny-cogvideox (bundled)": PACK_ROOT / "assets" / "tiny-cogvideox",
                  "tiny-cogvideox-i2v (bundled)": PACK_ROOT / "assets" / "tiny-cogvideox-i2v"}
BUNDLED_SVD_MODELS = {"tiny-svd (bundled)": PACK_ROOT / "assets" / "tiny-svd"}
BUNDLED_WAN_MODELS = {"tiny-wan (bundled)": PACK_ROOT / "assets" / "tiny-wan"}
MODEL_FOLDER_KINDS = ("CogVideo", "diffusers")
SVD_FOLDER_KINDS = ("SVD", "diffusers")
WAN_FOLDER_KINDS = ("Wan", "diffusers")
_FALLBACK_DIRS = {"input": Path(os.environ.get("VIDINV_INPUT_DIR", Path.cwd() / "input")),
                  "output": Path(os.environ.get("VIDINV_OUTPUT_DIR", Path.cwd() / "output")),
                  "models": Path(os.environ.get("VIDINV_MODELS_DIR", Path.cwd() / "models"))}


def register_model_folders() -> None:
    """models/CogVideo (the convention of the most used CogVideoX pack), models/SVD, models/Wan and
    models/diffusers."""
    if IN_COMFY:
        for kind in dict.fromkeys(MODEL_FOLDER_KINDS + SVD_FOLDER_KINDS + WAN_FOLDER_KINDS):
            _fp.add_model_folder_path(kind, os.path.join(_fp.models_dir, kind))


def install_sample_media() -> None:
    """Copy the pack's sample videos and images into ComfyUI's input folder (where core
    LoadVideo and LoadImage look),
    once; a file the user already has there is left alone."""
    if not IN_COMFY:
        return
    target = directory("input")
    for src in sorted((PACK_ROOT / "assets" / "videos").glob("vinv_*")):
        dst = target / src.name
        if not dst.exists():
            try:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
            except OSError as err:  # a read-only input folder must not stop the pack from loading
                logging.getLogger("vidinv").warning("could not copy sample video %s: %s", src.name, err)


def model_roots(kinds: tuple[str, ...] = MODEL_FOLDER_KINDS) -> list[Path]:
    """The folders of the given model folder kinds (CogVideoX's by default; SVD_FOLDER_KINDS for SVD,
    WAN_FOLDER_KINDS for Wan)."""
    if IN_COMFY:
        roots = []
        for kind in kinds:
            try:
                roots += [Path(p) for p in _fp.get_folder_paths(kind)]
            except KeyError:
                pass
        return roots
    return [_FALLBACK_DIRS["models"] / kind for kind in kinds]


def directory(kind: str) -> Path:
    """ComfyUI's input or output folder."""
    if IN_COMFY:
        return Path(_fp.get_input_directory() if kind == "input" else _fp.get_output_directory())
    return _FALLBACK_DIRS[kind]


def split_annotation(name: str) -> tuple[str, str]:
    """'file [output]' -> ('output', 'file'); 'file [input]' and 'file' -> ('input', 'file')."""
    for kind in ("output", "input"):
        suffix = f" [{kind}]"
        if name.endswith(suffix):
            return kind, name[: -len(suffix)]
    return "input", name


def inside(root: Path, path: Path) -> bool:
    """Whether `path`, with every symlink resolved, lies inside the resolved `root`."""
    try:
        return root.resolve() in path.resolve().parents
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop, a name too long
        return False


def annotated_path(name) -> Path:
    """'file [output]' / 'file [input]' / 'file' (input) -> the real path of a readable file
    inside that ComfyUI folder, as ComfyUI's loaders name files. Anything else is refused with
    one message that does not tell missing from unreadable from outside: a name can come from a
    string link, not only from the node's list, and must not be a way to probe the disk (absolute
    paths, '..', symlinks leading out, NUL bytes)."""
    kind, rel = split_annotation(name) if isinstance(name, str) else ("input", "")
    root, path = directory(kind), None
    try:
        if rel and "\0" not in rel and inside(root, root / rel):
            path = (root / rel).resolve()
            with open(path, "rb"):  # readable, and a file (a folder raises here)
                pass
    except (OSError, ValueError, RuntimeError):
        path = None
    if path is None:
        raise InputError(f"{shorten(name, 80)!r} is not a readable file in ComfyUI's {kind} folder",
                         f"Pick a file from the list: files in ComfyUI's {kind} folder (saved ones are marked "
                         "'[output]'); paths and links that lead outside the folder are refused.")
    return path


def compute_device() -> torch.device:
    return _mm.get_torch_device() if IN_COMFY else torch.device("cpu")


def offload_device() -> torch.device:
    return _mm.unet_offload_device() if IN_COMFY else torch.device("cpu")


def free_memory() -> None:
    if IN_COMFY:
        _mm.soft_empty_cache()


def check_interrupt() -> None:
    """Raises ComfyUI's interrupt exception when the user pressed Cancel."""
    if IN_COMFY:
        _mm.throw_exception_if_processing_interrupted()


def previews_enabled() -> bool:
    if not IN_COMFY:
        return False
    from comfy.cli_args import LatentPreviewMethod, args
    return args.preview_method != LatentPreviewMethod.NoPreviews


class Progress(Hooks):
    """ComfyUI's progress bar per step, an interrupt check before every model call, and a
    latent preview where the host has previews switched on."""

    def __init__(self, total: int, preview=None):
        self.bar = _utils.ProgressBar(total) if IN_COMFY else None
        self.preview = preview if previews_enabled() else None
        self.log: list[dict] = []

    def before_call(self) -> None:
        check_interrupt()

    def after_step(self, i: int, total: int, info: dict) -> None:
        self.log.append({k: v for k, v in info.items() if not isinstance(v, torch.Tensor)})
        if self.bar is not None:
            image = None
            if self.preview is not None and "denoised" in info:
                image = ("JPEG", self.preview(info["denoised"]), 512)
            self.bar.update_absolute(i + 1, total, image)
