"""The TRAJECTORY value: every latent of an inversion, and what is needed to trust it.

Latents ``[T+1, B, F, C, H, W]`` live on the CPU in the dtype the user chose; index 0 is the
clean latent, index T the inverted noise, index k the latent fed to the model at the k-th
grid timestep counted from the clean end. The value also carries the grid, the conditioning
and guidance used, the scheduler config, the model's fingerprint and per-step convergence, so
a sampler can refuse a trajectory that does not belong to its model or grid.

Every model family shares the value (`family`, see `vidinv.families`); what a field holds is the
family's (`vidinv.family.Family.trajectory_fields`), and the family checks its own fields:

- ``"cogvideox"``: `timesteps` are the DDIM grid's integer timesteps; `embeds` / `negative_embeds`
  the text conditioning; `image_latents` ``[B, F, C, H, W]`` for I2V models; `sigmas` None.
- ``"svd"`` (Stable Video Diffusion): `sigmas` is the Euler grid, T+1 values noisiest first ending at
  the clean end (0), latents[k] sits at ``sigmas[T - k]`` (unscaled, ``x = clean + sigma * noise``);
  `timesteps` are the T model-time values the UNet is called with (``0.25 log sigma``). `embeds` are
  the source's CLIP image embeddings ``[B, 1, D]``, `negative_embeds` the unconditional row (zeros, as
  SVD's CFG), `image_latents` the first frame's VAE latent ``[B, C, h, w]`` (noise-augmented,
  unscaled), `conditioning` the plain values (``added_time_ids``, ``fps``, ``motion_bucket_id``,
  ``noise_aug_strength``, ``seed``, ``min_guidance``, ``max_guidance``); `guidance` is the max
  guidance. Prompts are empty.
- ``"wan"`` (Wan 2.x text-to-video): `sigmas` is the flow-matching Euler grid, T+1 values noisiest
  first from 1 (pure noise) to 0, latents[k] sits at ``sigmas[T - k]`` (``x = (1 - sigma) clean +
  sigma noise``); `timesteps` are the T model times (``1000 sigma``, the scheduler's float32 values);
  `embeds` / `negative_embeds` the UMT5 text conditioning ``[1, 512, D]`` (zeros past each prompt);
  for image-to-video models `image_latents` ``[B, F, M + C, h, w]`` (the first-frame mask and the
  first frame's latent, `vidinv.models.wan.ImageCondition`) and `image_embeds` ``[B, N, D]`` (its
  CLIP tokens; a pack from before them refuses the file, as its Wan files carry no image latents).

Saved as safetensors: tensors plus one JSON metadata string under the key ``vidinv``, written as the
family's format version (`Family.trajectory_version`): CogVideoX as version 1 (what every earlier
version of the pack reads and writes), SVD as version 2 and Wan as version 4, so an older pack
refuses them instead of misreading them. A file that carries prompt-tuned embeddings
(``tuned_embeds``, issue 21) is written as version `TUNED_VERSION` (3) or its family's, whichever is
larger, so packs from before prompt tuning refuse it rather than load it without them; CogVideoX
files without them stay version 1.
Files without a ``family`` are CogVideoX.

Two kinds (`Trajectory.kind`), in every family: ``"exact"``, the exact inversion of the deterministic
sampler (latents[T] is the noise it reconstructs from), and ``"edit-friendly"`` (`vidinv.friendly`):
latents drawn from q(x_t | x_0) and ``noise_maps`` ``[T, B, F, C, H, W]`` (noisiest first), with which
the family's stochastic sampler reproduces x_0; ``extra.seed`` is the seed they were drawn with.
Edit-friendly files are written as version `FRIENDLY_VERSION` (5) or their family's, whichever is
larger, so earlier packs refuse them rather than sample them deterministically. An edit-friendly
inversion may leave its noisiest steps unsolved (``extra.first_step`` > 0, the sampling step its
samplers start at, `vidinv.pipeline.skip_steps`): no model call was made for them, their maps are
zeros, and such a file is written as version `PARTIAL_VERSION` (6), so that no earlier pack samples it
from its first step. A file declares its
kind in the metadata (``kind``; files from before the key: version 5 is edit-friendly, any other
exact), and loading holds it to the declaration (`check_kind`): a hand-edited file cannot change kind. ``above_tolerance`` (the inversion steps, cleanest first and
counted from 0, whose residual ended above the tolerance) is an optional key that earlier packs
ignore; files without it get it from their residuals and tolerance, so neither version changes.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from . import ddim, edm, errors, families, friendly, solver
from .errors import describe_value, is_count, is_number

FORMAT = "vidinv.trajectory"
TUNED_VERSION = 3  # the version of files that carry tuned_embeds (older packs read up to 2)
FRIENDLY_VERSION = 5  # the version of edit-friendly files (noise_maps; older packs read up to 4)
PARTIAL_VERSION = 6  # edit-friendly files whose noisiest steps were not solved (extra.first_step > 0)
VERSION = max(TUNED_VERSION, FRIENDLY_VERSION, PARTIAL_VERSION,
              *(f.trajectory_version for f in families.FAMILIES.values()))
KINDS = ("exact", friendly.KIND)  # what a file declares in its metadata ("kind")
STORAGE_DTYPES = ("fp32", "fp16", "bf16")  # what latents may be stored as (the nodes' list, in this order)


@dataclasses.dataclass(eq=False)
class Trajectory:
    latents: torch.Tensor  # [T+1, B, F, C, H, W]
    timesteps: list  # sampler grid, noisiest first, length T (CogVideoX: int timesteps; SVD: model times)
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
    family: str = families.DEFAULT  # a name in `vidinv.families`
    sigmas: list[float] | None = None  # SVD: the Euler grid, noisiest first, T+1 values ending at 0
    conditioning: dict = dataclasses.field(default_factory=dict)  # SVD: its first-frame values (svd.CONDITIONING_KEYS)
    above_tolerance: list[int] | None = None  # inversion steps (cleanest first) above `tolerance`; None: derive
    tuned_embeds: torch.Tensor | None = None  # [T, 1 or B, L, D] from prompt-tuning inversion, noisiest first
    image_embeds: torch.Tensor | None = None  # Wan I2V: the first frame's CLIP tokens [B, N, D]
    noise_maps: torch.Tensor | None = None  # edit-friendly: [T, B, F, C, H, W] per sampling step, noisiest first
    model_conds: dict | None = None  # native: {"<row kind>.<name>": tensor}, the model-level conditioning used

    def __post_init__(self):
        if self.above_tolerance is None:
            self.above_tolerance = steps_above(self.residuals, self.tolerance)

    # -- derived
    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @property
    def kind(self) -> str:
        """"edit-friendly" (it carries noise maps) or "exact"."""
        return "exact" if self.noise_maps is None else friendly.KIND

    @property
    def first_step(self) -> int:
        """The first sampling step (noisiest first) the trajectory can be sampled from: 0, or where an
        edit-friendly inversion started solving (`vidinv.pipeline.invert_friendly`'s `start_at`)."""
        return self.extra.get("first_step", 0)

    def require_exact(self, what: str) -> None:
        """Refuse an edit-friendly trajectory where only an exact one makes sense."""
        if self.noise_maps is not None:
            raise errors.InputError(
                f"{what} needs an exact trajectory; this one is edit-friendly (its latents are noisy draws, not the "
                "path of the deterministic sampler)", "Invert the video with the family's exact Invert node.")

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
        tensors = [self.latents, self.embeds, self.negative_embeds, self.image_latents, self.null_embeds,
                   self.tuned_embeds, self.image_embeds, self.noise_maps, *(self.model_conds or {}).values()]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None) / 1e6

    @property
    def family_name(self) -> str:
        return families.display_name(self.family)

    def summary(self) -> dict:
        """Plain numbers for the UI and logs."""
        out = {
            "steps": self.steps, "latent_shape": list(self.latents.shape[1:]),
            "dtype": str(self.latents.dtype).replace("torch.", ""), "size_mb": round(self.size_mb, 3),
            "guidance": self.guidance, "iterations": self.iterations, "tolerance": self.tolerance,
            "residuals": [float(r) for r in self.residuals], "calls": list(self.calls),
            "model": self.model_name, "prompt": self.prompt,
            "null_text": self.null_embeds is not None, "prompt_tuning": self.tuned_embeds is not None,
            "family": self.family, "kind": self.kind, "first_step": self.first_step,
            "above_tolerance": [{"step": k + 1, "residual": float(self.residuals[k]), "calls": int(self.calls[k])}
                                for k in self.above_tolerance],
            "warning": self.tolerance_warning(),
        }
        out.update(families.get(self.family).trajectory_summary(self))
        return out

    def step_place(self, k: int) -> str:
        """Where inversion step k (cleanest first) lands: the grid point its latent sits at."""
        return families.get(self.family).step_place(self, self.steps - 1 - k)

    def tolerance_warning(self, shown: int = 4) -> str:
        """What to tell the user when steps ended above the tolerance ("" when none did): which,
        by how much, what it means for the round trip, and what to change."""
        bad = self.above_tolerance
        if not bad:
            return ""
        tol = self.tolerance
        items = [f"step {k + 1} (to {self.step_place(k)}) at {self.residuals[k]:.2g}"
                 + (f" = {self.residuals[k] / tol:.0f}x" if math.isfinite(self.residuals[k]) else "")
                 + f" after {self.calls[k]} calls" for k in bad[:shown]]
        more = f" and {len(bad) - shown} more" if len(bad) > shown else ""
        solver = ""
        if families.get(self.family).solver_choice:
            other = "plain" if self.extra.get("memory", 5) else "anderson"
            solver = f", or the other solver ('{other}')"
        return (f"{len(bad)} of {self.steps} inversion steps ended above the tolerance {tol:g}: "
                f"{'; '.join(items)}{more}. Sampling reproduces those steps' inputs only to within their residuals, "
                "so this round trip is less exact than the tolerance promises. Raise 'iterations' (the budget is "
                "steps x (1 + iterations) model calls, pooled so the stiff clean end can borrow), use more steps "
                f"(smaller, less stiff steps){solver}.")

    # -- checks
    def check_family(self, family: str) -> None:
        """Refuse a sampler or model of the other family (a CogVideoX trajectory for SVD, or back)."""
        if family != self.family:
            raise errors.InputError(
                f"this is a {self.family_name} trajectory (made with {self.model_name!r}), but it was given to a "
                f"{families.display_name(family)} model or sampler",
                f"Sample it with the {self.family_name} model that inverted it, or invert the video again with "
                "this model.")

    def check_model(self, model) -> None:
        """Refuse a model other than the one that made this trajectory."""
        self.check_family(families.name_of(model))
        if model.fingerprint != self.model_fingerprint:
            raise errors.InputError(
                f"this trajectory was made with model {self.model_name!r} (fingerprint {self.model_fingerprint}), "
                f"but the chosen model is {model.name!r} (fingerprint {model.fingerprint})",
                "Sample with the model that inverted the video, or invert again with this one.")
        if self.latents.shape[-3] != model.latent_channels:
            raise errors.InputError(
                f"trajectory latents have {self.latents.shape[-3]} channels, the model has {model.latent_channels}",
                "Use the model that made the trajectory.")
        self.check_shapes(model)

    def check_shapes(self, model) -> None:
        """The conditioning and padding against the model's own configuration (what a model value
        does not say is not checked): the embeddings' length and width, the I2V image latents, the
        padding of CogVideoX 1.5's frame pairs, the latent size against the patch size."""
        def refuse(problem: str):
            raise errors.InputError(f"trajectory {self.model_name!r}: {problem}",
                                    "The file does not match its model; invert the video again with this model.")

        families.get(self.family).check_trajectory(self, model, refuse)

    def check_embeds(self, length: int | None, width: int | None, refuse) -> None:
        """The conditioning embeddings' (and null-text and prompt-tuned embeddings') tokens and
        channels against what the model takes (None: not known, not checked)."""
        for key in ("embeds", "null_embeds", "tuned_embeds"):
            t = getattr(self, key)
            if t is None:
                continue
            for got, want, what in ((t.shape[-2], length, "tokens"), (t.shape[-1], width, "channels")):
                if want is not None and got != want:
                    refuse(f"{key} {tuple(t.shape)} has {got} {what}, the model's conditioning has {want}")

    def check_grid(self, schedule) -> solver.Grid:
        """Refuse a grid other than the one inverted on; return the grid to sample this trajectory on.
        `schedule`: the model's scheduler config (a dict), or a grid value (`solver.Grid`,
        `ddim.Schedule`, `edm.Grid`)."""
        fam = families.get(self.family)
        config = schedule if isinstance(schedule, dict) else None
        if config is not None:
            grid = fam.grid_from_config(config, self.steps)
        elif isinstance(schedule, ddim.Schedule):
            grid = ddim.sampler_grid(schedule, self.steps)
        elif isinstance(schedule, edm.Grid):
            grid = edm.sampler_grid(schedule)
        else:
            grid = schedule
        if grid.kind != fam.grid_kind:  # a grid of another family's sampler
            self.check_family(next((f.name for f in families.FAMILIES.values() if f.grid_kind == grid.kind), grid.kind))
        return fam.check_trajectory_grid(self, grid, config)

    # -- storage
    def save(self, path) -> Path:
        from safetensors.torch import save_file
        path = Path(path)
        tensors = {"latents": self.latents.contiguous(), "embeds": self.embeds.contiguous(),
                   "negative_embeds": self.negative_embeds.contiguous()}
        for name in OPTIONAL_TENSORS:
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name).contiguous()
        for name, t in (self.model_conds or {}).items():
            tensors[MODEL_CONDS + name] = t.contiguous()
        meta = {k: getattr(self, k) for k in ("timesteps", "scheduler_config", "model_fingerprint", "model_name",
                                              "prompt", "negative_prompt", "guidance", "dynamic_cfg", "iterations",
                                              "tolerance", "residuals", "calls", "extra", "family",
                                              "above_tolerance")}
        if self.sigmas is not None:
            meta["sigmas"] = self.sigmas
        if self.conditioning:
            meta["conditioning"] = self.conditioning
        meta.update(format=FORMAT, kind=self.kind,
                    version=file_version(self.family, self.tuned_embeds is not None, self.kind, self.first_step > 0))
        try:  # what load() would refuse is never written (a NaN, a wrong type)
            check_fields(json.loads(json.dumps(meta)), path.name)
            read_tensors(tensors, path.name)
        except errors.InputError as err:
            raise errors.InputError(f"the trajectory was not saved: {err.problem}",
                                    "It holds values no trajectory file may carry; invert the video again.") from err
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"vidinv": json.dumps(meta)})
        return path


def file_version(family: str, tuned: bool, kind: str, partial: bool = False) -> int:
    """The version a trajectory file is written as: its family's, raised to `TUNED_VERSION` when it
    carries prompt-tuned embeddings, to `FRIENDLY_VERSION` when edit-friendly and to `PARTIAL_VERSION`
    when its noisiest steps were not solved, so a pack that cannot read those parts refuses the file."""
    version = families.get(family).trajectory_version if family in families.FAMILIES else 0
    if tuned:
        version = max(version, TUNED_VERSION)
    if kind == friendly.KIND:
        version = max(version, PARTIAL_VERSION if partial else FRIENDLY_VERSION)
    return version


def numbers(test):
    return lambda v: isinstance(v, list) and all(test(x) for x in v)


# the metadata schema: key -> (what the value must be, its test); OPTIONAL_FIELDS have defaults
FIELDS = {
    "timesteps": ("a list of finite numbers", numbers(is_number)),
    "scheduler_config": ("a JSON object", lambda v: isinstance(v, dict)),
    "model_fingerprint": ("a string", lambda v: isinstance(v, str)),
    "model_name": ("a string", lambda v: isinstance(v, str)),
    "prompt": ("a string", lambda v: isinstance(v, str)),
    "negative_prompt": ("a string", lambda v: isinstance(v, str)),
    "guidance": ("a finite number >= 0", lambda v: is_number(v) and v >= 0),
    "dynamic_cfg": ("true or false", lambda v: isinstance(v, bool)),
    "iterations": ("a whole number >= 0", is_count),
    "tolerance": ("a finite number >= 0", lambda v: is_number(v) and v >= 0),
    "residuals": ("a list of finite numbers >= 0", numbers(lambda x: is_number(x) and x >= 0)),
    "calls": ("a list of whole numbers >= 0", numbers(is_count)),
}
OPTIONAL_FIELDS = {  # key -> (what, test, default)
    "extra": ("a JSON object", lambda v: isinstance(v, dict), {}),
    "family": ("a string", lambda v: isinstance(v, str), families.DEFAULT),
    "sigmas": ("a list of finite numbers", numbers(is_number), None),
    "conditioning": ("a JSON object", lambda v: isinstance(v, dict), {}),
    "above_tolerance": ("a list of step indices", lambda v: isinstance(v, list) and all(type(k) is int for k in v),
                        None),  # None: derived from the residuals (files written before the key)
    "kind": (f"one of {', '.join(KINDS)}", lambda v: v in KINDS, None),  # None: files from before the key
}
TENSORS = ("latents", "embeds", "negative_embeds")
MODEL_CONDS = "model_conds."  # the prefix of a native trajectory's conditioning tensors in a file
OPTIONAL_TENSORS = ("image_latents", "null_embeds", "tuned_embeds", "image_embeds", "noise_maps")


def read_metadata(raw: str, name: str) -> tuple[dict, int]:
    """The trajectory's JSON metadata, checked field by field against the schema (defaults filled in),
    and the file's version."""
    try:
        meta = json.loads(raw)
    except ValueError as err:
        raise errors.InputError(f"{name!r} has damaged trajectory metadata", "Save the trajectory again.") from err
    if not isinstance(meta, dict):
        raise errors.InputError(f"{name!r}: the trajectory metadata is {errors.json_kind(meta)}, not a JSON object",
                                "Choose a file written by the Save Trajectory node, or save the trajectory again.")
    version = meta.get("version", -1)
    if meta.get("format") != FORMAT or not is_count(version) or version > VERSION:
        raise errors.InputError(f"{name!r} is format {meta.get('format')!r} version {version!r}, "
                                f"this pack reads {FORMAT} up to version {VERSION}",
                                "Update the pack, or save the trajectory again with this version.")
    return check_fields(meta, name), version


def check_fields(meta: dict, name: str) -> dict:
    """`meta`'s fields checked one by one against `FIELDS` / `OPTIONAL_FIELDS`; defaults filled in."""
    fields = {}
    for key, (what, test, *default) in [*FIELDS.items(), *OPTIONAL_FIELDS.items()]:
        if key not in meta:
            if not default:
                raise errors.InputError(f"{name!r}: the trajectory metadata lacks the field {key!r} ({what})",
                                        "Save the trajectory again.")
            fields[key] = default[0]
            continue
        if not test(meta[key]):
            raise errors.InputError(f"{name!r}: the trajectory field {key!r} must be {what}, got "
                                    f"{describe_value(meta[key])}", "Save the trajectory again.")
        fields[key] = meta[key]
    return fields


def read_tensors(tensors: dict, name: str) -> dict:
    """The trajectory's tensors: present, floating point, finite (their shapes: `validate`)."""
    for key in TENSORS:
        if key not in tensors:
            raise errors.InputError(f"{name!r} lacks the tensor {key!r}", "Save the trajectory again.")
    unknown = [k for k in tensors if k not in (*TENSORS, *OPTIONAL_TENSORS) and not k.startswith(MODEL_CONDS)]
    if unknown:
        raise errors.InputError(f"{name!r} holds a tensor {errors.shorten(unknown[0], 60)!r} that no trajectory has",
                                "Choose a file written by the Save Trajectory node.")
    for key in tensors:
        t = tensors.get(key)
        if t is None:
            continue
        if not t.is_floating_point():
            raise errors.InputError(f"{name!r}: tensor {key!r} is {str(t.dtype).replace('torch.', '')}, a trajectory "
                                    "holds floating-point tensors (fp32, fp16 or bf16)", "Save the trajectory again.")
        if t.numel() == 0:
            raise errors.InputError(f"{name!r}: tensor {key!r} is empty (shape {tuple(t.shape)})",
                                    "Save the trajectory again.")
        if not torch.isfinite(t).all():
            raise errors.InputError(f"{name!r}: tensor {key!r} holds NaN or infinite values",
                                    "The inversion that wrote it diverged or the file was altered; invert again.")
    conds = {k[len(MODEL_CONDS):]: t for k, t in tensors.items() if k.startswith(MODEL_CONDS)}
    return {**{k: tensors.get(k) for k in (*TENSORS, *OPTIONAL_TENSORS)}, "model_conds": conds or None}


def load(path) -> Trajectory:
    """Read a trajectory file, refusing missing, corrupt, foreign and malformed files with a reason:
    every metadata field and tensor is checked against the schema (`FIELDS`, `TENSORS`) and the
    whole against itself (`validate`); `Trajectory.check_model` checks it against a model."""
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
    fields, version = read_metadata(raw, path.name)
    declared = fields.pop("kind")
    traj = Trajectory(**read_tensors(tensors, path.name), **fields)
    validate(traj, path.name)
    check_kind(traj, declared, version, path.name)
    return traj


def check_kind(traj: Trajectory, declared: str | None, version: int, name: str) -> None:
    """A file's kind is what it declares (files from before the declaration: what their version says,
    as only edit-friendly files were written as `FRIENDLY_VERSION`), never what its tensors suggest:
    an edit-friendly file needs its noise maps, an exact one has none, and the version must be the one
    the kind and contents are written as (`file_version`), so no edit turns one kind into another."""
    kind = declared or (friendly.KIND if version == FRIENDLY_VERSION else "exact")
    fix = "The file was altered; save the trajectory again from its Invert node."
    if kind != traj.kind:
        has = "carries noise maps" if traj.noise_maps is not None else "has no noise maps"
        raise errors.InputError(f"{name!r} is declared {kind} (version {version}) but {has}", fix)
    expected = file_version(traj.family, traj.tuned_embeds is not None, kind, traj.first_step > 0)
    if version != expected:
        raise errors.InputError(f"{name!r} is version {version}, but a {kind} {traj.family_name} trajectory"
                                f"{' with prompt-tuned embeddings' if traj.tuned_embeds is not None else ''} is written "
                                f"as version {expected}", fix)


def steps_above(residuals, tolerance: float) -> list[int]:
    """Indices of the steps whose residual is not within a positive tolerance (an unmeasured, NaN
    residual of an older file counts as above). Tolerance 0 asks for fixed iterations: none. Values
    that are not numbers are left to `validate` and the loader's checks to refuse."""
    if not (isinstance(tolerance, (int, float)) and tolerance > 0 and isinstance(residuals, (list, tuple))):
        return []
    return [k for k, r in enumerate(residuals) if not (isinstance(r, (int, float)) and r <= tolerance)]


def validate(traj: Trajectory, source: str = "trajectory") -> None:
    """Internal consistency: one latent per grid point plus the clean one, 6-D latents, the
    conditioning tensors' shapes, one residual and call count per step, the padding."""
    def refuse(problem: str, fix: str = "Save the trajectory again."):
        raise errors.InputError(f"{source}: {problem}", fix)

    lat = traj.latents
    if lat.dim() != 6:
        refuse(f"latents must be [T+1, B, F, C, H, W], got {tuple(lat.shape)}")
    steps = len(traj.timesteps)
    if lat.shape[0] != steps + 1:
        refuse(f"{lat.shape[0]} latents for {steps} timesteps (need one more latent than timesteps)")
    if steps == 0:
        refuse("the trajectory has no steps")
    if traj.embeds.dim() != 3 or traj.embeds.shape[0] not in (1, lat.shape[1]):
        refuse(f"embeds must be [1 or B={lat.shape[1]}, L, D], got {tuple(traj.embeds.shape)}")
    if traj.negative_embeds.shape != traj.embeds.shape:
        refuse(f"negative_embeds {tuple(traj.negative_embeds.shape)} must have the shape of embeds "
               f"{tuple(traj.embeds.shape)}")
    nulls = traj.null_embeds
    if nulls is not None and nulls.dim() == 4 and nulls.shape[0] != steps:
        refuse(f"{nulls.shape[0]} null-text embeddings for {steps} steps", "Run null-text inversion again.")
    if nulls is not None and (nulls.dim() != 4 or nulls.shape[2:] != traj.embeds.shape[1:]):
        refuse(f"null_embeds must be [T, 1, L, D] = [{steps}, 1, {', '.join(map(str, traj.embeds.shape[1:]))}], got "
               f"{tuple(nulls.shape)}", "Run null-text inversion again.")
    tuned = traj.tuned_embeds
    if tuned is not None and (tuned.dim() != 4 or tuned.shape[0] != steps or tuned.shape[1] not in (1, lat.shape[1])
                              or tuned.shape[2:] != traj.embeds.shape[1:]):
        refuse(f"tuned_embeds must be [T, 1 or B, L, D] = [{steps}, 1 or {lat.shape[1]}, "
               f"{', '.join(map(str, traj.embeds.shape[1:]))}], got {tuple(tuned.shape)}",
               "Run prompt-tuning inversion again.")
    maps = traj.noise_maps
    if maps is not None and tuple(maps.shape) != (steps, *lat.shape[1:]):
        refuse(f"noise_maps must be [T, B, F, C, H, W] = [{steps}, {', '.join(map(str, lat.shape[1:]))}], got "
               f"{tuple(maps.shape)}", "Run the edit-friendly inversion again.")
    if maps is not None and (traj.null_embeds is not None or traj.tuned_embeds is not None):
        refuse("an edit-friendly trajectory carries no null-text or prompt-tuned embeddings")
    if traj.image_embeds is not None and traj.image_latents is None:
        refuse(f"image_embeds {tuple(traj.image_embeds.shape)} without image_latents")
    if traj.family in families.FAMILIES and bool(traj.model_conds) != families.get(traj.family).model_conditioned:
        refuse("model_conds belong to ComfyUI-native trajectories, and every native trajectory has them")
    if traj.family in families.FAMILIES and not families.get(traj.family).optimisable:
        for key in ("null_embeds", "tuned_embeds"):
            if getattr(traj, key) is not None:
                refuse(f"a {families.display_name(traj.family)} trajectory carries no {key} (null-text and prompt "
                       "tuning are CogVideoX's)")
    check_magnitudes(traj, refuse)
    for key in ("residuals", "calls"):
        if len(getattr(traj, key)) != steps:
            refuse(f"{len(getattr(traj, key))} {key} for {steps} steps (one per step)")
    pad = traj.extra.get("pad_frames", 0)
    if not (is_count(pad) and pad < lat.shape[2]):
        refuse(f"extra.pad_frames must be a whole number from 0 to {lat.shape[2] - 1} (fewer than the "
               f"{lat.shape[2]} latent frames), got {describe_value(pad)}")
    first = traj.extra.get("first_step", 0)
    if not (is_count(first) and first < steps and (first == 0 or maps is not None)):
        refuse(f"extra.first_step must be a whole number from 0 to {steps - 1} (and 0 for an exact trajectory), got "
               f"{describe_value(first)}")
    n = min(len(traj.timesteps), len(traj.residuals), len(traj.calls))
    if not (isinstance(traj.above_tolerance, list)
            and all(type(k) is int and 0 <= k < n for k in traj.above_tolerance)):
        refuse(f"'above_tolerance' is {str(traj.above_tolerance)[:40]}, not a list of step indices 0..{n - 1}")
    if traj.family not in families.FAMILIES:
        raise errors.InputError(f"{source}: model family {traj.family!r} is not one of {', '.join(families.FAMILIES)}",
                                "Update the pack, or save the trajectory again.")
    families.get(traj.family).validate_trajectory(traj, refuse)


LATENT_LIMIT = 1e5  # no latent comes near this (~N(0, 1); SVD's noisiest, sigma 700 x noise, stays under 1e4)
EMBED_RATIO = 100.0  # optimised embeddings stay within this many times the RMS of the prompt's own


def rms(t: torch.Tensor) -> float:
    return float(t.float().pow(2).mean().sqrt())


def check_magnitudes(traj: Trajectory, refuse) -> None:
    """Values no inversion writes: latents or noise maps beyond `LATENT_LIMIT`, null-text or tuned
    embeddings whose RMS is more than `EMBED_RATIO` times the source conditioning's."""
    for key in ("latents", "noise_maps", "image_latents"):
        t = getattr(traj, key)
        peak = 0.0 if t is None else float(t.abs().max())
        if peak > LATENT_LIMIT:
            refuse(f"{key} reach {peak:.3g}, beyond any latent ({LATENT_LIMIT:g})")
    scale = max(rms(traj.embeds), rms(traj.negative_embeds), 1e-3)
    for key in ("null_embeds", "tuned_embeds"):
        t = getattr(traj, key)
        if t is not None and rms(t) > EMBED_RATIO * scale:
            refuse(f"{key} have an RMS of {rms(t):.3g}, over {EMBED_RATIO:g}x the prompt embeddings' ({scale:.3g}): "
                   "no optimisation writes that", "The file was altered; run the inversion again.")
