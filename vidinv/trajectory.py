"""The TRAJECTORY value: every latent of an inversion, and what is needed to trust it.

Latents ``[T+1, B, F, C, H, W]`` live on the CPU in the dtype the user chose; index 0 is the
clean latent, index T the inverted noise, index k the latent fed to the model at the k-th
grid timestep counted from the clean end. The value also carries the grid, the conditioning
and guidance used, the scheduler config, the model's fingerprint and per-step convergence, so
a sampler can refuse a trajectory that does not belong to its model or grid.

Saved as safetensors: tensors plus one JSON metadata string under the key ``vidinv``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from . import ddim, errors

FORMAT = "vidinv.trajectory"
VERSION = 1
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclasses.dataclass(eq=False)
class Trajectory:
    latents: torch.Tensor  # [T+1, B, F, C, H, W]
    timesteps: list[int]  # sampler grid, noisiest first, length T
    scheduler_config: dict
    model_fingerprint: str
    model_name: str
    prompt: str
    negative_prompt: str
    embeds: torch.Tensor  # [1, L, D] conditioning used at inversion
    negative_embeds: torch.Tensor
    guidance: float
    dynamic_cfg: bool
    iterations: int
    tolerance: float
    residuals: list[float]
    calls: list[int]
    image_latents: torch.Tensor | None = None  # [B, F, C, H, W] for I2V models
    null_embeds: torch.Tensor | None = None  # [T, 1, L, D] from null-text inversion, noisiest first
    extra: dict = dataclasses.field(default_factory=dict)

    # -- derived
    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @property
    def noise(self) -> torch.Tensor:
        return self.latents[-1].float()

    @property
    def clean(self) -> torch.Tensor:
        return self.latents[0].float()

    def latent_for_step(self, i: int) -> torch.Tensor:
        """The latent the sampler feeds to the model at sampling step i (noisiest first)."""
        return self.latents[self.steps - i].float()

    @property
    def size_mb(self) -> float:
        tensors = [self.latents, self.embeds, self.negative_embeds, self.image_latents, self.null_embeds]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None) / 1e6

    def summary(self) -> dict:
        """Plain numbers for the UI and logs."""
        return {
            "steps": self.steps, "latent_shape": list(self.latents.shape[1:]),
            "dtype": str(self.latents.dtype).replace("torch.", ""), "size_mb": round(self.size_mb, 3),
            "guidance": self.guidance, "iterations": self.iterations, "tolerance": self.tolerance,
            "residuals": [float(r) for r in self.residuals], "calls": list(self.calls),
            "model": self.model_name, "prompt": self.prompt,
            "null_text": self.null_embeds is not None,
        }

    # -- checks
    def check_model(self, model) -> None:
        """Refuse a model other than the one that made this trajectory."""
        if model.fingerprint != self.model_fingerprint:
            raise errors.InputError(
                f"this trajectory was made with model {self.model_name!r} (fingerprint {self.model_fingerprint}), "
                f"but the chosen model is {model.name!r} (fingerprint {model.fingerprint})",
                "Sample with the model that inverted the video, or invert again with this one.")
        if self.latents.shape[-3] != model.latent_channels:
            raise errors.InputError(
                f"trajectory latents have {self.latents.shape[-3]} channels, the model has {model.latent_channels}",
                "Use the model that made the trajectory.")

    def check_grid(self, schedule: ddim.Schedule) -> None:
        expected = ddim.timesteps(schedule, self.steps)
        if expected != list(self.timesteps):
            raise errors.InputError(
                f"the trajectory's {self.steps}-step grid {self.timesteps[:3]}... does not match the model's "
                f"{expected[:3]}...", "The scheduler config differs from the one used at inversion; invert again.")

    # -- storage
    def save(self, path) -> Path:
        from safetensors.torch import save_file
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"latents": self.latents.contiguous(), "embeds": self.embeds.contiguous(),
                   "negative_embeds": self.negative_embeds.contiguous()}
        for name in ("image_latents", "null_embeds"):
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name).contiguous()
        meta = {k: getattr(self, k) for k in ("timesteps", "scheduler_config", "model_fingerprint", "model_name",
                                              "prompt", "negative_prompt", "guidance", "dynamic_cfg", "iterations",
                                              "tolerance", "residuals", "calls", "extra")}
        meta.update(format=FORMAT, version=VERSION)
        save_file(tensors, str(path), metadata={"vidinv": json.dumps(meta)})
        return path


def load(path) -> Trajectory:
    """Read a trajectory file, refusing missing, corrupt and foreign files with a reason."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise errors.InputError(f"trajectory file {str(path)!r} does not exist",
                                "Save a trajectory first, or put the .safetensors file in ComfyUI's input folder.")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("vidinv")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types for damaged files
        raise errors.InputError(f"{path.name!r} could not be read as a safetensors file ({err})",
                                "The file is damaged or not a trajectory; save the trajectory again.") from err
    if raw is None:
        raise errors.InputError(f"{path.name!r} is a safetensors file but not a trajectory (no 'vidinv' metadata)",
                                "Choose a file written by the Save Trajectory node.")
    try:
        meta = json.loads(raw)
    except ValueError as err:
        raise errors.InputError(f"{path.name!r} has damaged trajectory metadata", "Save the trajectory again.") from err
    if meta.get("format") != FORMAT or int(meta.get("version", -1)) > VERSION:
        raise errors.InputError(f"{path.name!r} is format {meta.get('format')!r} version {meta.get('version')}, "
                                f"this pack reads {FORMAT} up to version {VERSION}",
                                "Update the pack, or save the trajectory again with this version.")
    for name in ("latents", "embeds", "negative_embeds"):
        if name not in tensors:
            raise errors.InputError(f"{path.name!r} lacks the tensor {name!r}", "Save the trajectory again.")
    traj = Trajectory(latents=tensors["latents"], embeds=tensors["embeds"], negative_embeds=tensors["negative_embeds"],
                      image_latents=tensors.get("image_latents"), null_embeds=tensors.get("null_embeds"),
                      **{k: meta[k] for k in ("timesteps", "scheduler_config", "model_fingerprint", "model_name",
                                              "prompt", "negative_prompt", "guidance", "dynamic_cfg", "iterations",
                                              "tolerance", "residuals", "calls")},
                      extra=meta.get("extra", {}))
    validate(traj, path.name)
    return traj


def validate(traj: Trajectory, source: str = "trajectory") -> None:
    """Internal consistency: one latent per grid point plus the clean one, 6-D latents."""
    if traj.latents.dim() != 6:
        raise errors.InputError(f"{source}: latents must be [T+1, B, F, C, H, W], got {tuple(traj.latents.shape)}",
                                "Save the trajectory again.")
    if traj.latents.shape[0] != len(traj.timesteps) + 1:
        raise errors.InputError(f"{source}: {traj.latents.shape[0]} latents for {len(traj.timesteps)} timesteps "
                                "(need one more latent than timesteps)", "Save the trajectory again.")
    if traj.null_embeds is not None and traj.null_embeds.shape[0] != len(traj.timesteps):
        raise errors.InputError(f"{source}: {traj.null_embeds.shape[0]} null-text embeddings for "
                                f"{len(traj.timesteps)} steps", "Run null-text inversion again.")
