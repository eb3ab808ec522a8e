"""The model-family interface: everything the one pipeline (`vidinv.pipeline`), the trajectory
(`vidinv.trajectory`) and the shared nodes need from a family of video diffusion models. A family is
one module under `vidinv.models` with one object satisfying `Family`, registered in `vidinv.families`;
adding a family is that module and its nodes (docs/design.md, "Adding a family").

Values that cross the interface and belong to no family live here too: `Guidance`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, ContextManager, Protocol

import torch

from . import errors
from .solver import Denoiser, Grid

Attention = Callable[[int, torch.Tensor], "ContextManager | None"]  # per-step context of a sample call


@dataclasses.dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance, one value for every family; each family checks the parts it has.

    scale: the guidance scale (1 = off); SVD: the last frame's scale.
    dynamic: CogVideoX's dynamic CFG (a function of the timestep).
    first: SVD's frame-wise guidance, the first frame's scale (rising linearly to `scale`);
        None = `scale` on every frame.
    second: the second network's scale where a family has two experts chosen by timestep (Wan 2.2
        A14B's low-noise expert, diffusers' ``guidance_scale_2``); None = `scale`.
    """
    scale: float = 1.0
    dynamic: bool = False
    first: float | None = None
    second: float | None = None

    @property
    def first_scale(self) -> float:
        """The first frame's scale (`scale` when the guidance is the same on every frame)."""
        return self.scale if self.first is None else self.first

    @property
    def second_scale(self) -> float:
        """The second expert's scale (`scale` when both experts share it)."""
        return self.scale if self.second is None else self.second

    @property
    def uses_cfg(self) -> bool:
        """CFG rows are batched when any scale exceeds 1 (as the diffusers pipelines decide)."""
        return max(self.scale, self.first_scale, self.second_scale) > 1.0

    def check_one_scale(self, family: str, experts: int = 1) -> None:
        """What a family with one guidance scale per network (CogVideoX, Wan) accepts: scales >= 1, no
        frame-wise first-frame scale, and a second expert's scale only with two `experts`; `family`
        names it in the message."""
        check_scale(self.scale)
        if self.first is not None and self.first != self.scale:
            raise errors.InputError(f"first-frame guidance {self.first} is Stable Video Diffusion's frame-wise "
                                    f"guidance; {family} takes one scale", "Give one guidance scale.")
        if self.second is not None and self.second != self.scale:
            if experts < 2:
                raise errors.InputError(f"a second expert's guidance {self.second} was given, and this {family} model "
                                        "has one network", "Leave the second guidance unset (or equal to guidance).")
            check_scale(self.second)


GUIDES = ("trajectory", "one-call")  # what a guided sample with the difference mask can be guided by


@dataclasses.dataclass(frozen=True)
class EditRecipe:
    """A family's measured edit chain: what the nodes' automatic settings resolve to (BENCHMARKS section 6, each
    picked by a rule written before the models that checked it were read).

    weight: Reference Attention's weight (0 = no reference pass), in the first `end` of the steps.
    guide: the trajectory a guided sample with the difference mask follows: the inverted one ("trajectory"), or the
        one-call inversion of its clean latent ("one-call": DDIM Invert with iterations 0, one model call per
        step; with the source prompt the difference mask is empty and the source comes back exactly either way).
    mask_level: the difference mask's cut level scale (`vidinv.editmask.EditMask`'s level).
    """
    weight: float = 2.0
    end: float = 0.4
    guide: str = GUIDES[0]
    mask_level: float = 1.0


# The measured chains (BENCHMARKS section 6): each family's `edit_recipe` returns these; a model kind not named here
# gets `EditRecipe()`. The nodes' tooltips and the workflows' notes are written from this table (`measured_picks`).
MEASURED_RECIPES = {
    # sessions 15-16's rules over eight models (weight 8, one-call guide), checked on three more; session 19's rule on
    # five models at 16 videos (0.9 x Otsu's level), checked on two more
    "CogVideoX text-to-video": EditRecipe(weight=8.0, guide=GUIDES[1], mask_level=0.9),
    # session 19's rules on thirteen models at 16 videos, checked on two more each
    "Wan text-to-video": EditRecipe(weight=4.0, mask_level=0.6),
    # session 23's rule K: the same chain, picked on two trained Wan I2V models (first frame on channels), checked on
    # two more (one with CLIP tokens)
    "Wan image-to-video": EditRecipe(weight=4.0, mask_level=0.6),
}


def measured_picks(field: str) -> str:
    """"CogVideoX text-to-video 8, Wan text-to-video 4, 2 otherwise": each measured recipe's `field`, then the
    default's (the words the nodes' tooltips and the workflows' notes use)."""
    def value(recipe):
        v = getattr(recipe, field)
        return f"{v:g}" if isinstance(v, float) else v
    return ", ".join([f"{kind} {value(r)}" for kind, r in MEASURED_RECIPES.items()] +
                     [f"{value(EditRecipe())} otherwise"])


def check_scale(guidance: float) -> None:
    """Guidance is 1 (off) or more: below 1 CFG would weaken the prompt (0 ignores it), and the
    pack's exact inversion and reference rows are defined for guidance >= 1 only."""
    if not (isinstance(guidance, (int, float)) and math.isfinite(guidance) and guidance >= 1.0):
        raise errors.InputError(f"guidance {guidance!r} must be a finite number >= 1 (below 1 it would weaken the "
                                "prompt instead of guiding; 0 ignores it)", "Use 1 for no guidance, or more.")


class Family(Protocol):
    """One model family: CogVideoX (`vidinv.models.cogvideox.FAMILY`), Stable Video Diffusion
    (`vidinv.models.svd.FAMILY`), Wan (`vidinv.models.wan.FAMILY`). A loaded model value names its family in ``model.family``; a
    trajectory in ``traj.family``. Tensors cross as latents ``[B, F, C, H, W]``, scaled by the VAE."""

    name: str  # stored in trajectories and model values ("cogvideox")
    display_name: str  # for messages ("CogVideoX")
    own_nodes: str  # the nodes to use for its models, named when one reaches another family's node
    trajectory_version: int  # the trajectory file version this family's trajectories are written as
    text_conditioned: bool  # whether the conditioning is a prompt (negative prompts, null-text apply)
    optimisable: bool  # whether null-text and prompt-tuning inversion run on it (their embeddings in trajectories)
    model_conditioned: bool  # whether its trajectories carry core's model-level conditioning (model_conds)
    grid_kind: str  # `vidinv.solver.Grid.kind` of its sampler ("ddim", "euler")
    solver_choice: bool  # whether its Invert node lets the user pick the solver (for hints)

    # -- model
    def networks(self, model) -> tuple[torch.nn.Module, ...]:
        """The denoising networks, in a fixed order (what moves to the compute device for a sampling
        loop, `loading.networks_on_device`, and receives the reference processors): one, or Wan
        2.2's two experts chosen by timestep (its denoiser puts the one in use on the device)."""

    # -- VAE
    def encode_frames(self, model, images: torch.Tensor, frames: str, size: str, width: int, height: int,
                      tiling: str) -> tuple[torch.Tensor, torch.Tensor | None, int, torch.Tensor, str]:
        """IMAGE frames -> (latent, image conditioning or None, padded frames, the frames encoded, a note);
        the image conditioning is what rides with the latent (CogVideoX I2V: a latent tensor; Wan I2V:
        a `wan.ImageCondition`)."""

    def encode_video(self, model, frames: torch.Tensor) -> torch.Tensor:
        """IMAGE frames already fitted to the model -> latent ``[1, F, C, h, w]``."""

    def decode(self, model, latents: torch.Tensor, tiling: str = "auto") -> torch.Tensor:
        """Latent ``[B, F, C, h, w]`` -> IMAGE frames ``[B*N, H, W, 3]``."""

    # -- sampling
    def grid(self, model, steps: int) -> Grid:
        """The model's own `steps`-step sampling grid (InputError for a step count it cannot make)."""

    def check_inputs(self, model, cond, latent: torch.Tensor, image_latents: torch.Tensor | None) -> None:
        """The latent, conditioning and image latents against the model, before any model call."""

    def check_guidance(self, guidance: Guidance) -> None:
        """Refuse the parts of `guidance` this family does not have."""

    def denoiser(self, model, cond, guidance: Guidance, grid: Grid, image_latents: torch.Tensor | None = None,
                 negative: Callable | None = None, attention: Attention | None = None,
                 positive: Callable | None = None) -> Denoiser:
        """``denoise(x, i)`` for step i of `grid` with CFG batched into one network call; the same
        callable serves sampling and inversion. `negative(t)`: per-step unconditional embeddings
        (text families); `attention(i, x)`: a context entered around step i's network call;
        `positive(t)`: per-step conditional embeddings (text families: prompt tuning)."""

    # -- trajectories
    def trajectory_fields(self, model, cond, guidance: Guidance, grid: Grid,
                          image_latents: torch.Tensor | None) -> dict:
        """The `Trajectory` fields that record this family's conditioning, guidance and grid."""

    def trajectory_guidance(self, traj) -> Guidance:
        """The guidance a trajectory was inverted with."""

    def source_conditioning(self, traj):
        """The conditioning a trajectory was inverted with (its reference passes use it)."""

    def grid_from_config(self, config: dict, steps: int) -> Grid:
        """The grid a scheduler config gives (a trajectory is checked against its model's)."""

    def check_trajectory_grid(self, traj, grid: Grid, config: dict | None) -> Grid:
        """Refuse a grid other than the trajectory's own (`config`: the model's, for the message);
        return the grid to sample the trajectory on."""

    def check_trajectory(self, traj, model, refuse: Callable[[str], None]) -> None:
        """The trajectory's conditioning and padding against the model's configuration."""

    def validate_trajectory(self, traj, refuse: Callable[[str], None]) -> None:
        """The family's own fields of a trajectory, against themselves (at load and save)."""

    def trajectory_summary(self, traj) -> dict:
        """Plain numbers for the UI beyond the common ones."""

    def step_place(self, traj, i: int) -> str:
        """Where sampling step i's input sits, in words ("timestep 981", "sigma 700"), for messages."""

    def latent_extras(self, traj) -> tuple[torch.Tensor | None, int]:
        """(image latents, padded frames) that ride with a trajectory's noise as a LATENT."""

    def first_frame_latents(self, model, latent: torch.Tensor, first_frame: torch.Tensor | None):
        """An edited first frame (IMAGE), fitted to the size of `latent` ``[B, F, C, h, w]``, encoded as the image
        conditioning a sample of that latent takes (None: the source's); refused by families without one."""

    def edit_conditioning(self, model, traj, cond):
        """The conditioning a guided sample uses (`cond`, or the trajectory's source where allowed)."""

    # -- reference attention
    def reference_options(self, options):
        """`vidinv.attention.ReferenceOptions` with this family's parts checked (and defaults filled)."""

    def check_reference(self, model, options) -> None:
        """The options against the model (window, weight, rows, layers), before any sampling."""

    def reference_layers(self, model, options) -> tuple:
        """Keys of the attention layers that receive the reference (their K/V are recorded under them)."""

    def reference_processors(self, model, layers) -> tuple[Callable, ...]:
        """One ``processors(channel) -> {processor name: processor}`` per network of `networks` for those
        layers (`vidinv.attention.installed` swaps them into every network, with one channel)."""

    def edit_recipe(self, model) -> EditRecipe:
        """The measured edit chain for `model` (`EditRecipe`); a model kind nothing was measured on gets the
        default one."""

    # -- edit masks (`vidinv.editmask`)
    def edit_mask_tokens(self, model, traj, cond) -> torch.Tensor:
        """``[B, L]`` weights of the edited prompt's tokens the attention mask follows (those not in the
        source prompt; a row without any keeps either mask empty); InputError for a family without a
        prompt."""

    def patch_grid(self, model) -> tuple[int, int, int]:
        """(frames, height, width) latent cells per transformer token, for the attention mask."""

    def reference_call(self, model, traj, grid: Grid, cond, guidance: Guidance, options, per_cfg_row: bool,
                       negative: Callable | None,
                       positive: Callable | None = None) -> Callable[[torch.Tensor, int], object]:
        """``call(x_ref, i)``: one reference pass of the trajectory latent at step i through the
        network (one row per video, or one per CFG row when `per_cfg_row`)."""
