"""Save and load trajectories (safetensors with JSON metadata)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..vidinv import errors, trajectory
from . import host
from .common import CATEGORY, MODEL, TRAJECTORY, latent_value

SUFFIX = ".safetensors"


def trajectory_files() -> list[str]:
    """.safetensors files in the input folder, then those in the output folder (annotated
    ' [output]', as ComfyUI's loaders accept them). Anything that is not a trajectory is refused
    with the reason when loaded."""
    names = []
    for kind in ("input", "output"):
        root = host.directory(kind)
        if root.is_dir():
            found = sorted(root.rglob(f"*{SUFFIX}"))
            names += [str(p.relative_to(root)) + ("" if kind == "input" else " [output]") for p in found]
    return names


def next_path(prefix: str) -> Path:
    """ComfyUI's numbering: <output>/<prefix>_00001.safetensors, never overwriting."""
    out = host.directory("output")
    prefix = prefix.strip().lstrip("/") or "trajectories/trajectory"
    base = (out / prefix).resolve()
    if out.resolve() not in base.parents:
        raise errors.InputError(f"filename_prefix {prefix!r} points outside the output folder",
                                "Use a relative prefix such as 'trajectories/edit'.")
    base.parent.mkdir(parents=True, exist_ok=True)
    n = 1 + max([int(p.stem.rsplit("_", 1)[-1]) for p in base.parent.glob(f"{base.name}_*{SUFFIX}")
                 if p.stem.rsplit("_", 1)[-1].isdigit()] or [0])
    return base.parent / f"{base.name}_{n:05d}{SUFFIX}"


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

    @classmethod
    def IS_CHANGED(cls, file, **_):
        path = host.annotated_path(file)
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else file

    def load(self, model, file):
        traj = trajectory.load(host.annotated_path(file))
        traj.check_model(model)
        traj.check_grid(model.scheduler_config)
        if traj.family == "svd":  # the image latents belong to the conditioning, not to the latent
            noise = latent_value(traj.noise, model)
        else:
            noise = latent_value(traj.noise, model, traj.image_latents, traj.extra.get("pad_frames", 0))
        return {"ui": {"vinv_trajectory": [traj.summary()]}, "result": (traj, noise)}
