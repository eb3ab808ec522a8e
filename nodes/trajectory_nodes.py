"""Save and load trajectories (safetensors with JSON metadata)."""
from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..vidinv import errors, trajectory
from . import host
from .common import CATEGORY, MODEL, TRAJECTORY
from .pipeline_nodes import trajectory_noise

SUFFIX = ".safetensors"
MAX_PREFIX = 200  # characters and UTF-8 bytes: with the numbering the name stays under every file system's 255


def trajectory_files() -> list[str]:
    """.safetensors files in the input folder, then those in the output folder (annotated
    ' [output]', as ComfyUI's loaders accept them). Anything that is not a trajectory is refused
    with the reason when loaded; symlinks that lead outside their folder are not listed."""
    names = []
    for kind in ("input", "output"):
        root = host.directory(kind)
        if root.is_dir():
            found = sorted(p for p in root.rglob(f"*{SUFFIX}") if host.inside(root, p))
            names += [str(p.relative_to(root)) + ("" if kind == "input" else " [output]") for p in found]
    return names


def next_path(prefix: str) -> Path:
    """ComfyUI's numbering: <output>/<prefix>_00001.safetensors, never overwriting. A prefix that
    is absolute, leads outside the output folder, holds a NUL byte or is too long is refused."""
    out = host.directory("output")
    fix = "Use a relative prefix such as 'trajectories/edit'."
    if not isinstance(prefix, str):
        raise errors.InputError(f"filename_prefix is {type(prefix).__name__}, not text", fix)
    prefix = prefix.strip() or "trajectories/trajectory"
    shown = errors.shorten(prefix)
    if "\0" in prefix:
        raise errors.InputError(f"filename_prefix {shown!r} contains a NUL byte", fix)
    if any(unicodedata.category(c) == "Cc" for c in prefix):
        raise errors.InputError(f"filename_prefix {shown!r} contains a control character (a newline, tab or escape)",
                                fix)
    if len(prefix) > MAX_PREFIX:
        raise errors.InputError(f"filename_prefix {shown!r} is {len(prefix)} characters long (at most {MAX_PREFIX})",
                                fix)
    if len(prefix.encode("utf-8")) > MAX_PREFIX:  # file systems count bytes: 'é' is two
        raise errors.InputError(f"filename_prefix {shown!r} is {len(prefix.encode('utf-8'))} bytes long in UTF-8 (at "
                                f"most {MAX_PREFIX})", fix)
    if PurePosixPath(prefix).is_absolute() or PureWindowsPath(prefix).anchor:
        raise errors.InputError(f"filename_prefix {shown!r} is an absolute path; it is always under ComfyUI's "
                                "output folder", fix)
    base = (out / prefix).resolve()
    if out.resolve() not in base.parents:
        raise errors.InputError(f"filename_prefix {shown!r} points outside the output folder", fix)
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        folder = str(base.parent.relative_to(out.resolve()))
        raise errors.InputError(f"filename_prefix {shown!r}: the folder {folder!r} cannot be made in the output "
                                f"folder ({err.strerror})",
                                "Use another prefix (a file of that name may be in the way).") from err
    n = 1 + max([int(p.stem.rsplit("_", 1)[-1]) for p in base.parent.glob(f"{base.name}_*{SUFFIX}")
                 if p.stem.rsplit("_", 1)[-1].isdigit()] or [0])
    return base.parent / f"{base.name}_{n:05d}{SUFFIX}"


def file_changed(cls, file, **_) -> str:
    """A file node's IS_CHANGED: the file's hash, so ComfyUI reruns the node when the file changes. Only
    files inside ComfyUI's folders are read; the node refuses the others with the reason."""
    try:
        return hashlib.sha256(host.annotated_path(file).read_bytes()).hexdigest()
    except (errors.InputError, OSError):
        return str(file)


class SaveTrajectory:
    DESCRIPTION = "Saves a trajectory as .safetensors (latents, conditioning, grid, metadata) in the output folder."
    CATEGORY = f"{CATEGORY}/trajectory"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "trajectory": (TRAJECTORY, {"tooltip": "The trajectory to save."}),
            "filename_prefix": ("STRING", {"default": "trajectories/trajectory",
                                           "tooltip": "Path under ComfyUI's output folder; a number is appended."}),
        }}

    def save(self, trajectory, filename_prefix):
        path = trajectory.save(next_path(filename_prefix))
        rel = path.relative_to(host.directory("output").resolve())
        return {"ui": {"vinv_saved": [{"filename": path.name, "subfolder": str(rel.parent), "type": "output",
                                       "size_mb": round(path.stat().st_size / 1e6, 3)}]}}


class LoadTrajectory:
    DESCRIPTION = ("Loads a trajectory file (input folder, or saved ones in the output folder) and checks it "
                   "against the chosen model "
                   "and its grid; damaged, foreign or mismatched files are refused with the reason.")
    CATEGORY = f"{CATEGORY}/trajectory"
    RETURN_TYPES = (TRAJECTORY, "LATENT")
    RETURN_NAMES = ("trajectory", "noise")
    OUTPUT_TOOLTIPS = ("The loaded trajectory.", "Its inverted noise.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The model the trajectory must belong to."}),
            "file": (trajectory_files(), {"tooltip": "A .safetensors trajectory from ComfyUI's input folder, "
                                                     "or one saved to the output folder ('[output]')."}),
        }}

    IS_CHANGED = classmethod(file_changed)

    def load(self, model, file):
        traj = trajectory.load(host.annotated_path(file))
        traj.check_model(model)
        traj.check_grid(model.scheduler_config)
        return {"ui": {"vinv_trajectory": [traj.summary()]}, "result": (traj, trajectory_noise(traj, model))}
