"""Inversion, sampling and guided sampling for a loaded model of any family: the loops of
`vidinv.solver` driven by the family's denoiser (`vidinv.family.Family`), the inversion recorded as a
TRAJECTORY, guided sampling with reference K/V (`vidinv.attention`). Written once; no family is named
here and no ComfyUI either.

`hooks` (`vidinv.hooks.Hooks`) is how a host follows along: ``before_call()`` before every network
call (reference passes included), ``after_step(i, total, info)`` after every step.

Latents are ``[B, F, C, H, W]``, scaled by the VAE; the noise a sampler starts from is the latent at
the grid's first point (a trajectory's noise goes in as it is; fresh unit noise is multiplied by the
grid's ``init_noise_sigma``, as the pipelines do).
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from . import attention, budget, editmask, errors, families, family, flow, flowedit, friendly, solver
from .attention import ReferenceOptions, ReferenceSpec
from .family import Guidance
from .hooks import Hooks, guarded
from .models.loading import DTYPES, networks_on_device
from .trajectory import STORAGE_DTYPES, Trajectory


def check_dtype(dtype: str) -> torch.dtype:
    if dtype not in STORAGE_DTYPES:
        raise errors.InputError(f"trajectory dtype {dtype!r} is not one of {', '.join(STORAGE_DTYPES)}",
                                "Pick fp32, fp16 or bf16.")
    return DTYPES[dtype]


def checked_family(model, cond, latent: torch.Tensor, guidance: Guidance, image_latents):
    """The family, after checking the inputs and the guidance before any model call."""
    fam = families.of(model)
    fam.check_inputs(model, cond, latent, image_latents)
    fam.check_guidance(guidance)
    return fam


@torch.no_grad()
def invert(model, cond, latent: torch.Tensor, steps: int, guidance: Guidance = Guidance(),
           settings: solver.Solver = solver.Solver(), dtype: str = "fp32", image_latents: torch.Tensor | None = None,
           hooks: Hooks | None = None, pad_frames: int = 0) -> Trajectory:
    """Exact inversion of `latent` on the model's `steps`-step grid into a Trajectory, with the same
    guidance as sampling will use (the round trip stays exact under CFG).

    At most ``1 + settings.iters`` model calls per step on average, pooled across steps with a
    tolerance (`vidinv.solver.step_budget`); a grid with a step that cannot be inverted is refused
    before any model call (`vidinv.solver.invert`). `image_latents`: conditioning that rides with the latent
    (an image-to-video family's, where it has one); `pad_frames`: frames the VAE Encode node padded
    (kept with the trajectory)."""
    hooks = hooks or Hooks()
    fam = checked_family(model, cond, latent, guidance, image_latents)
    settings = settings.resolved(guidance.uses_cfg)
    storage = check_dtype(dtype)
    grid = fam.grid(model, steps)
    budget.require_trajectory(steps, latent)
    denoise = guarded(fam.denoiser(model, cond, guidance, grid, image_latents), hooks)

    def after(info):
        hooks.after_step(info["i"], steps, {k: v for k, v in info.items() if k not in ("i", "x", "stats")}
                         | {"residual": info["stats"].residual, "calls": info["stats"].calls})

    with networks_on_device(fam.networks(model), model):
        latents, stats = solver.invert(denoise, latent, grid, settings, callback=after)
    return record(model, fam, cond, guidance, grid, image_latents, latents, storage, iterations=int(settings.iters),
                  tolerance=float(settings.tol), extra={**settings.record(), "pad_frames": int(pad_frames)},
                  residuals=[s.residual for s in stats], calls=[s.calls for s in stats])


def skip_steps(start_at: float, steps: int) -> int:
    """How many of `steps` sampling steps a sampler that starts at fraction `start_at` of them skips:
    the steps i with ``i / steps < start_at`` (the Reference Attention window's rule). At least one
    step is always left."""
    if not (isinstance(start_at, (int, float)) and 0.0 <= start_at < 1.0):
        raise errors.InputError(f"start_at {start_at!r} is not a fraction of the steps in [0, 1)",
                                "Use 0 to sample every step, or for example 0.34 to skip the noisiest third.")
    return min(len(attention.window_steps(0.0, start_at, steps)), steps - 1)


def first_guided_step(traj: Trajectory, start_at: float) -> int:
    """The sampling step a guided sample of `traj` starts at: `start_at`'s (`skip_steps`), but never
    before the steps the trajectory solved (``first_step``)."""
    return max(skip_steps(start_at, traj.steps), traj.first_step)


@torch.no_grad()
def invert_friendly(model, cond, latent: torch.Tensor, steps: int, guidance: Guidance = Guidance(), seed: int = 0,
                    dtype: str = "fp32", image_latents: torch.Tensor | None = None, hooks: Hooks | None = None,
                    pad_frames: int = 0, start_at: float = 0.0) -> Trajectory:
    """Edit-friendly DDPM inversion (`vidinv.friendly`) of `latent` on the model's `steps`-step grid:
    every latent drawn from q(x_t | x_0) with noise from `seed`, and the noise map of each step solved
    under `guidance`, one model call per step. The Trajectory carries the maps (`noise_maps`);
    sampling with them (`sample`, `guided_sample`) reproduces `latent` with the same conditioning
    and guidance, and edits with another. `start_at` > 0: only the steps a sampler starting there
    runs are solved (`skip_steps`; ``extra.first_step``), and its samplers start there."""
    hooks = hooks or Hooks()
    fam = checked_family(model, cond, latent, guidance, image_latents)
    storage = check_dtype(dtype)
    first = skip_steps(start_at, steps)
    grid = fam.grid(model, steps)
    budget.require_trajectory(steps, latent, maps=True, what="the edit-friendly inversion")
    friendly.posterior(grid)  # a grid without levels is refused before any model call
    denoise = guarded(fam.denoiser(model, cond, guidance, grid, image_latents), hooks)

    def after(info):
        hooks.after_step(info["i"], steps - first, {k: v for k, v in info.items() if k not in ("i", "x", "map")}
                         | {"residual": 0.0, "calls": 1})

    with networks_on_device(fam.networks(model), model):
        latents, maps = friendly.invert(denoise, latent, grid, torch.Generator().manual_seed(int(seed)),
                                        callback=after, first=first)
    return record(model, fam, cond, guidance, grid, image_latents, latents, storage, iterations=0, tolerance=0.0,
                  extra={"pad_frames": int(pad_frames), "seed": int(seed)} | ({"first_step": first} if first else {}),
                  residuals=[0.0] * steps, calls=[1] * (steps - first) + [0] * first,
                  noise_maps=torch.stack(maps).to(storage))


def record(model, fam, cond, guidance: Guidance, grid: solver.Grid, image_latents, latents, storage,
           **fields) -> Trajectory:
    """The Trajectory of an inversion: its latents (cleanest first), grid, model and the family's fields."""
    return Trajectory(
        latents=torch.stack(latents).to(storage), timesteps=list(grid.timesteps),
        scheduler_config=dict(model.scheduler_config), model_fingerprint=model.fingerprint, model_name=model.name,
        family=fam.name, sigmas=None if grid.sigmas is None else list(grid.sigmas),
        **fam.trajectory_fields(model, cond, guidance, grid, image_latents), **fields)


def run(model, fam, denoise, noise: torch.Tensor, grid: solver.Grid, hooks: Hooks, start: int = 0,
        noise_maps: torch.Tensor | None = None, blend=None) -> torch.Tensor:
    """The sampling loop on `grid` with progress after every step: deterministic, or with an
    edit-friendly trajectory's `noise_maps` the stochastic sampler they were solved for; `blend`
    (an edit mask) applied after every step."""
    def after(info):
        hooks.after_step(info["i"], grid.steps, {k: v for k, v in info.items() if k != "i"})

    with networks_on_device(fam.networks(model), model):
        if noise_maps is None:
            return solver.sample(denoise, noise, grid, after, start, blend)
        return friendly.sample(denoise, noise, grid, noise_maps, callback=after, start=start, blend=blend)


@torch.no_grad()
def sample(model, cond, noise: torch.Tensor, steps: int, guidance: Guidance = Guidance(),
           image_latents: torch.Tensor | None = None, negative=None, start: int = 0,
           hooks: Hooks | None = None, positive=None, noise_maps: torch.Tensor | None = None) -> torch.Tensor:
    """Deterministic sampling on the model's `steps`-step grid from `noise` (``[B, F, C, H, W]``; the
    latent at step `start`, 0 for noise); returns the clean latent. `negative(t)`: per-step
    unconditional embeddings (text families: null-text or negative-prompt inversion); `positive(t)`:
    per-step conditional embeddings (text families: prompt tuning, `vidinv.nulltext.positive_for`).
    `noise_maps` (an edit-friendly trajectory's, ``[T, B, F, C, H, W]``): its stochastic sampler instead."""
    hooks = hooks or Hooks()
    fam = checked_family(model, cond, noise, guidance, image_latents)
    grid = fam.grid(model, steps)
    if noise_maps is not None and tuple(noise_maps.shape) != (steps, *noise.shape):
        raise errors.InputError(f"noise maps {tuple(noise_maps.shape)} do not fit {steps} steps of a latent "
                                f"{tuple(noise.shape)}", "Sample the edit-friendly trajectory's own noise on its grid.")
    denoise = guarded(fam.denoiser(model, cond, guidance, grid, image_latents, negative, positive=positive), hooks)
    return run(model, fam, denoise, noise, grid, hooks, start, noise_maps)


# What a guided sample with the difference mask follows: the family's pick, the inverted trajectory, or the one-call
# inversion of its clean latent (`vidinv.family.EditRecipe`)
GUIDES = ("auto", *family.GUIDES)


def with_reference(model, traj: Trajectory, options: ReferenceOptions | None = None, guide: str = GUIDES[1]):
    """A copy of `model` carrying the trajectory and reference options for `guided_sample` (the
    model itself is not changed). The options' family-specific parts, the layers and the trajectory
    are checked against the model here, before any sampling.

    `guide` (`GUIDES`): "one-call": a guided sample with the difference mask follows the one-call inversion of the
    trajectory's clean latent instead of the trajectory (`guide_for`: DDIM Invert with iterations 0, on the
    trajectory's conditioning, guidance and grid, one model call per step; made by the first such sample and kept
    with the patched model, so a sample without that mask costs nothing for it); a trajectory inverted with 0
    iterations is one already. "auto": the family's `EditRecipe.guide` where the trajectory is exact and carries no
    optimised embeddings, else "trajectory"."""
    fam = families.of(model)
    opts = fam.reference_options(options or ReferenceOptions())
    fam.check_reference(model, opts)
    traj.check_model(model)
    guide = resolve_guide(fam.edit_recipe(model).guide if guide == GUIDES[0] else guide, traj, guide == GUIDES[0])
    one_call = OneCallGuide(model, traj) if guide == GUIDES[2] and traj.iterations > 0 else None
    return dataclasses.replace(model, reference=ReferenceSpec(traj, opts, one_call))


class OneCallGuide:
    """The one-call inversion of `traj`'s clean latent by `model` (DDIM Invert with iterations 0 on the trajectory's
    conditioning, guidance, grid and storage dtype), made on the first `get` and kept; a failed or interrupted
    making leaves nothing kept."""

    def __init__(self, model, traj: Trajectory):
        self.model, self.source, self.made = model, traj, None

    def get(self, hooks: Hooks | None = None) -> Trajectory:
        if self.made is None:
            fam, traj = families.of(self.model), self.source
            image_latents, pad = fam.latent_extras(traj)
            dtype = next(name for name in STORAGE_DTYPES if DTYPES[name] == traj.latents.dtype)
            self.made = invert(self.model, fam.source_conditioning(traj), traj.clean, traj.steps,
                               fam.trajectory_guidance(traj), solver.Solver(iters=0), dtype, image_latents, hooks, pad)
        return self.made


def resolve_guide(guide: str, traj: Trajectory, auto: bool) -> str:
    """`guide` for `traj`: "one-call" needs an exact trajectory without null-text or prompt-tuned embeddings (its
    inversion has neither); `auto` falls back to "trajectory" where it has them, a choice is refused."""
    if guide not in GUIDES:
        raise errors.InputError(f"guide {guide!r} is not one of {', '.join(GUIDES)}", "Pick one of them.")
    if guide != GUIDES[2]:
        return guide
    why = "is edit-friendly (its noise maps belong to its own latents)" if traj.noise_maps is not None else \
        "carries optimised text embeddings (null-text or prompt tuning)" if traj.null_embeds is not None or \
        traj.tuned_embeds is not None else None
    if why is None:
        return guide
    if auto:
        return GUIDES[1]
    raise errors.InputError(f"guide 'one-call' inverts the trajectory's clean latent again with one call per step; "
                            f"this trajectory {why}, which that inversion would drop",
                            "Set guide to 'trajectory' (or 'auto'), or connect an exact trajectory from an Invert "
                            "node.")


def guide_for(spec: ReferenceSpec, edit_mask: editmask.EditMask | None, hooks: Hooks | None = None) -> Trajectory:
    """The trajectory a guided sample follows: the spec's one-call guide where the edit mask is the difference map
    (empty with the source prompt, so the source still comes back exactly; made here the first time, with `hooks`),
    else the patched trajectory."""
    difference = edit_mask is not None and edit_mask.given is None and edit_mask.source == "difference"
    return spec.guide.get(hooks) if spec.guide is not None and difference else spec.trajectory


# Guided sampling's starts: the trajectory's noise, fresh noise (the published recipe), or fresh noise inside the edit
# mask and the trajectory's outside it (the masked region starts free of the source, the rest exact; issue 36)
STARTS = ("inverted", "fresh", "fresh in mask")


def start_used(start: str, traj: Trajectory, start_at: float, edit_mask: editmask.EditMask | None) -> str:
    """The start a guided sample of `traj` uses: `start`, except that "fresh in mask" is "inverted" where it has
    nothing to act on: no mask made before sampling (none, or the attention map, made during sampling), an
    edit-friendly trajectory (its noise maps belong to its own latents) or a late start (no noise to replace)."""
    if start != STARTS[2]:
        return start
    made_before = edit_mask is not None and (edit_mask.given is not None or edit_mask.source == "difference")
    return start if made_before and traj.noise_maps is None and not first_guided_step(traj, start_at) else STARTS[0]


def start_noise(traj: Trajectory, start: str, seed: int, scale: float = 1.0) -> torch.Tensor:
    """The trajectory's inverted noise, or fresh unit noise times `scale` (the grid's first sigma)."""
    if start == "inverted":
        return traj.noise
    if start == "fresh":
        g = torch.Generator().manual_seed(int(seed))
        return torch.randn(traj.noise.shape, generator=g) * scale
    raise errors.InputError(f"start {start!r} is not one of {', '.join(STARTS)}", "Pick one of them.")


@torch.no_grad()
def guided_sample(model, cond=None, guidance: Guidance = Guidance(), start: str = "inverted", seed: int = 0,
                  negative=None, image_latents: torch.Tensor | None = None, hooks: Hooks | None = None,
                  positive=None, edit_mask: editmask.EditMask | None = None, start_at: float = 0.0,
                  inverted_share: float = 0.0) -> torch.Tensor:
    """Sample the trajectory's grid with a new conditioning while the chosen attention layers also
    attend to the K/V of the trajectory latent at each step, recomputed through the same network with
    the trajectory's source conditioning (`vidinv.attention`). The model must come from
    `with_reference`.

    The reference has one row per video, shared by the CFG rows, unless the trajectory was itself
    inverted under CFG and every row receives the reference: then each CFG row gets its own, made with
    the conditioning that row used at inversion, so that on reconstruction every row attends to
    duplicates of its own keys (DESIGN fact 5). With ``start="inverted"`` and the source conditioning
    this reconstructs as plain sampling does, for any options. An edit-friendly trajectory
    (`invert_friendly`) is sampled with its noise maps, its noisy latents as the reference.

    `cond` None: the trajectory's source conditioning where the family allows it. `negative(t)` /
    `positive(t)`: per-step embeddings for the CFG branches, as in `sample`.
    `image_latents`: an edited first frame's, for families whose latent carries them (else the
    source's); the reference pass always uses the source's.

    `edit_mask` (`vidinv.editmask.EditMask`): after every step, outside the mask the latent is the
    trajectory's; the mask is given, or made from the sample's attention to the prompt tokens that
    differ from the source's, or from the difference of the predictions under the two prompts
    (families with a prompt, `Family.edit_mask_tokens`); the last step's mask is left in
    ``edit_mask.latent``.

    ``start="fresh in mask"``: fresh noise (from `seed`) inside an edit mask made before sampling (the difference
    map's or a given MASK), the trajectory's noise outside; with the source prompt the difference mask is empty,
    so the source still comes back exactly. Where it has nothing to act on it is ``"inverted"`` (`start_used` says
    which start a call uses). `inverted_share` (0..1): the share of the variance inside the mask that is the
    trajectory's noise (``sqrt(s) inverted + sqrt(1 - s) fresh``; 0 = fresh only, 1 = the inverted start).

    `start_at` > 0: skip the noisiest steps (`skip_steps`) and start from the trajectory's latent
    where the rest begins (an exact one's or an edit-friendly one's: the source still comes back
    exactly); the skipped steps cost no call (on held-out Wans a late start kept less of the source,
    BENCHMARKS section 6).
    A trajectory solved from a later step only (``first_step``) starts there whatever `start_at` says."""
    spec = getattr(model, "reference", None)
    if spec is None:
        raise errors.InputError("Guided Sample needs a model patched with a trajectory",
                                "Connect the output of the Reference Attention node to its model input.")
    if not (isinstance(inverted_share, (int, float)) and 0.0 <= inverted_share <= 1.0):
        raise errors.InputError(f"inverted_share {inverted_share!r} is not a share between 0 and 1",
                                "Give 0 (fresh noise in the mask) to 1 (the inverted noise).")
    hooks = hooks or Hooks()
    fam = families.of(model)
    traj, opts = guide_for(spec, edit_mask, hooks), fam.reference_options(spec.options)
    traj.check_model(model)
    grid = traj.check_grid(model.scheduler_config)
    fam.check_reference(model, opts)
    cond = fam.edit_conditioning(model, traj, cond)
    source_image, _ = fam.latent_extras(traj)
    if image_latents is not None and source_image is not None and image_latents.shape != source_image.shape:
        raise errors.InputError(f"the edited first frame encodes to {tuple(image_latents.shape)}, the trajectory's "
                                f"image conditioning is {tuple(source_image.shape)}",
                                "Give a first frame of the source video's size.")
    image = source_image if image_latents is None else image_latents
    skip = first_guided_step(traj, start_at)
    start = start_used(start, traj, start_at, edit_mask)
    if traj.noise_maps is not None and start != "inverted":
        raise errors.InputError(f"start {start!r} with an edit-friendly trajectory: its noise maps belong to its own "
                                "noisy latents", "Set start to 'inverted' (or use an exact trajectory).")
    if skip and start != "inverted":
        raise errors.InputError(f"start_at {start_at:g} starts from the trajectory's latent at step {skip + 1}; with "
                                f"start {start!r} there is none", "Set start to 'inverted', or start_at to 0.")
    noise = traj.latent_for_step(skip) if skip else \
        start_noise(traj, STARTS[0] if start == STARTS[2] else start, seed, grid.init_noise_sigma)
    checked_family(model, cond, noise, guidance, image)
    layers = fam.reference_layers(model, opts)
    probe, blend, fixed = masking(model, fam, traj, cond, noise, edit_mask, grid, image, hooks)
    if start == STARTS[2]:  # fresh noise inside the mask made before sampling, the inverted noise outside
        fresh = start_noise(traj, STARTS[1], seed, grid.init_noise_sigma)
        if inverted_share:
            fresh = inverted_share ** 0.5 * noise + (1 - inverted_share) ** 0.5 * fresh
        noise = editmask.blend(fresh, fixed, noise)
    per_cfg_row = attention.reference_per_cfg_row(guidance.uses_cfg, fam.trajectory_guidance(traj).uses_cfg, opts.rows)
    reference = guarded(fam.reference_call(model, traj, grid, cond, guidance, opts, per_cfg_row, negative, positive),
                        hooks)
    active = set(opts.active_steps(traj.steps))
    with attention.installed(fam.networks(model), fam.reference_processors(model, layers)) as channel:
        per_step = attention.per_step(channel, layers, traj.latent_for_step, reference, opts.weight, opts.rows,
                                      guidance.uses_cfg, active.__contains__, opts.text)

        def step_attention(i: int, x: torch.Tensor):
            ctx = per_step(i, x)  # the step's reference pass (it guards its own call)
            hooks.before_call()  # then the sample's call
            if probe is None:
                return ctx
            stack = contextlib.ExitStack()
            if ctx is not None:
                stack.enter_context(ctx)
            stack.enter_context(channel.probing(probe))
            return stack

        denoise = fam.denoiser(model, cond, guidance, grid, image, negative, step_attention, positive)
        return run(model, fam, denoise, noise, grid, hooks, skip, noise_maps=traj.noise_maps, blend=blend)


def masking(model, fam, traj: Trajectory, cond, noise: torch.Tensor, edit_mask, grid: solver.Grid, image,
            hooks: Hooks):
    """(probe or None, blend or None, the mask when it is made before sampling or None) of a guided sample:
    `blend(i, x)` keeps step i's result inside the edit mask and the trajectory's next latent outside it
    (`vidinv.editmask`). A difference mask
    is made here, before sampling (`editmask.difference_map`: two unguided calls per probed step),
    for the rows whose prompt or first frame changed; an attention mask cannot see a first frame's
    change, so a row where only that changed is refused."""
    if edit_mask is None:
        return None, None, None
    probe, fixed = None, None
    source_image, _ = fam.latent_extras(traj)
    if edit_mask.given is not None:
        fixed = editmask.from_pixels(edit_mask.given, noise.shape, model.temporal_factor)
    elif edit_mask.source == "difference":
        rows = (fam.edit_mask_tokens(model, traj, cond).sum(1) > 0) | \
            editmask.image_changed(source_image, image, noise.shape[0])
        if rows.any():
            predict = [guarded(fam.denoiser(model, c, Guidance(1.0), grid, im), hooks)
                       for c, im in ((fam.source_conditioning(traj), source_image), (cond, image))]
            with networks_on_device(fam.networks(model), model):
                scores = editmask.difference_map(*predict, traj.latent_for_step, grid.steps, rows)
        else:  # neither the prompt nor the first frame changed (a reconstruction): the map is empty
            scores = torch.zeros(noise.shape[0], noise.shape[1], *noise.shape[-2:])
        fixed = edit_mask.cut_map(scores.flatten(1), tuple(scores.shape[1:]), (1, 1, 1), noise.shape)
    else:
        tokens = fam.edit_mask_tokens(model, traj, cond)
        if bool((editmask.image_changed(source_image, image, noise.shape[0]) & (tokens.sum(1) == 0)).any()):
            raise errors.InputError("the attention mask follows the prompt's changed words, and the prompt is the "
                                    "source's while the first frame is edited: the mask would be empty and the "
                                    "edit lost", "Set mask_source to 'difference' (it sees the first frame's "
                                    "change too), or connect a MASK.")
        probe = editmask.Probe(tokens)
        patch = fam.patch_grid(model)
        grid_tokens = tuple(n // p for n, p in zip((noise.shape[1], *noise.shape[-2:]), patch))

    fixed = None if fixed is None else edit_mask.grown(fixed)

    def blend(i: int, x: torch.Tensor) -> torch.Tensor:
        mask = fixed
        if probe is not None:
            scores = probe.average()
            if scores is None:  # no probed call yet
                return x
            mask = edit_mask.grown(edit_mask.cut_map(scores, grid_tokens, patch, x.shape))
        edit_mask.latent = mask
        return editmask.blend(x, mask, traj.latent_for_step(i + 1))  # past the last step: the clean latent

    return probe, blend, fixed


@torch.no_grad()
def flow_edit(model, source, target, latent: torch.Tensor, steps: int, n_max: int, n_min: int = 0, n_avg: int = 1,
              source_guidance: Guidance = Guidance(), target_guidance: Guidance = Guidance(), seed: int = 0,
              image_latents: torch.Tensor | None = None, hooks: Hooks | None = None,
              edit_mask: editmask.EditMask | None = None, target_image_latents=None) -> torch.Tensor:
    """FlowEdit (`vidinv.flowedit`) of the clean `latent` from the `source` to the `target`
    conditioning on the model's `steps`-step grid, without inversion: the paper's steps n_max down to
    n_min + 1, then n_min plain steps with the target. A model whose grid is not a flow grid, a window
    the grid does not hold and n_avg < 1 are refused before any model call. Progress counts the
    n_max steps run; every fresh noise comes from `seed`.

    `edit_mask`: a given MASK, or the prediction-difference map (``source="difference"``; the
    attention map needs a trajectory's sample and is refused) cut per frame: DiffEdit's unguided
    predictions under the two prompts on the source noised (noise from ``seed + 1``) to the levels
    of the cleanest 40 % of the steps, two one-row calls per ten steps (at most ten) before editing; rows
    whose prompts (and first frames) are equal get an empty mask (the source, exactly). The mask used is left in
    ``edit_mask.latent``.

    Image-to-video: `image_latents` is the source's first-frame conditioning, `target_image_latents` an edited
    first frame's for the target velocity (None: the source's)."""
    hooks = hooks or Hooks()
    target_image = image_latents if target_image_latents is None else target_image_latents
    fam = families.of(model)
    if fam.grid_kind != flow.KIND:
        raise errors.InputError(f"FlowEdit needs a flow-matching model; {getattr(model, 'name', '?')!r} is a "
                                f"{fam.display_name} model (its sampler is {fam.grid_kind!r})",
                                "Load a flow model (Wan), or edit this one with its Invert node + Reference "
                                "Attention + Guided Sample.")
    for cond, guidance, image in ((source, source_guidance, image_latents), (target, target_guidance, target_image)):
        checked_family(model, cond, latent, guidance, image)
    grid = fam.grid(model, steps)
    first, _ = flowedit.window(grid.steps, n_min, n_max, n_avg)
    if edit_mask is not None and edit_mask.given is None and edit_mask.source != "difference":
        raise errors.InputError(f"FlowEdit's mask source {edit_mask.source!r} follows a sample's attention; FlowEdit "
                                "has no such sample", "Use the 'difference' mask source, or give a MASK.")
    v_src = guarded(fam.denoiser(model, source, source_guidance, grid, image_latents), hooks)
    v_tar = guarded(fam.denoiser(model, target, target_guidance, grid, target_image), hooks)
    mask = None
    if edit_mask is not None:
        mask = edit_mask.grown(flow_edit_mask(model, fam, (source, target), latent, grid, (image_latents, target_image),
                                              edit_mask, seed, hooks))
        edit_mask.latent = mask

    def after(info):
        hooks.after_step(info["i"] - first, n_max, {k: v for k, v in info.items() if k != "i"})

    with networks_on_device(fam.networks(model), model):
        return flowedit.sample(v_src, v_tar, latent, grid, n_max, n_min, n_avg,
                               torch.Generator().manual_seed(int(seed)), after, mask)


def flow_edit_mask(model, fam, conds, latent: torch.Tensor, grid: solver.Grid, images,
                   edit_mask: editmask.EditMask, seed: int, hooks: Hooks) -> torch.Tensor:
    """FlowEdit's latent mask ``[B, F, 1, h, w]``: the given MASK, or the difference map of the
    unguided predictions under the (source, target) `conds` and first-frame `images` on the noised source
    (`flow_edit`); rows whose prompt and first frame are both unchanged get none."""
    if edit_mask.given is not None:
        return editmask.from_pixels(edit_mask.given, latent.shape, model.temporal_factor)
    batch = latent.shape[0]
    rows = (conds[0].embeds.expand(batch, -1, -1) != conds[1].embeds.expand(batch, -1, -1)).flatten(1).any(1) | \
        editmask.image_changed(*images, batch)
    if not bool(rows.any()):
        return torch.zeros(batch, latent.shape[1], 1, *latent.shape[-2:])
    g = torch.Generator().manual_seed(int(seed) + 1)
    noised = {i: (1.0 - grid.sigmas[i]) * latent.float() + grid.sigmas[i] * torch.randn(latent.shape, generator=g)
              for i in editmask.difference_steps(grid.steps)}
    predict = [guarded(fam.denoiser(model, c, Guidance(1.0), grid, image), hooks) for c, image in zip(conds, images)]
    with networks_on_device(fam.networks(model), model):
        scores = editmask.difference_map(*predict, noised.__getitem__, grid.steps, rows)
    return edit_mask.cut_map(scores.flatten(1), tuple(scores.shape[1:]), (1, 1, 1), latent.shape)
