"""The adapter to ComfyUI core's sampling internals, for the native path (docs/design.md, "Two ways
in"): the one module that knows how core calls a MODEL. Tested on ComfyUI 0.3.75 and 0.33.0, whose
interfaces used here are the same: ``comfy.samplers.CFGGuider`` / ``Sampler``, the model sampling
classes, ``ModelPatcher.clone`` / ``add_wrapper_with_key`` (APPLY_MODEL, OUTER_SAMPLE),
``transformer_options["optimized_attention_override"]`` (core >= 0.3.60) and the ``("double_block", i)``
block replacement of Wan. Where a later core differs, this module is the place to say so.

- `invert`: core's Euler sampler inverted on a MODEL. A `comfy.samplers.Sampler` of our own runs inside
  core's own `CFGGuider.sample`, so the denoiser is core's (conds processed, model loaded and patched,
  CFG as core does it) and the pack's solver (`vidinv.solver`) inverts each step. An APPLY_MODEL
  wrapper keeps the model-level conditioning of each CFG row for the reference passes.
- `InvertedNoise`: the inverted noise as core's NOISE, for SamplerCustomAdvanced.
- `flow_edit`: FlowEdit (`vidinv.flowedit`) on a flow MODEL: a `Sampler` of our own runs inside a `CFGGuider`
  that holds both prompts (``sampling_function`` with the source or the target pair and scale per call).
- `ReferencePatch`: reference attention as a MODEL patch (Wan): each chosen block is marked through
  the block replacement, its first attention call (the self-attention) hands over or injects reference
  K/V through the attention override, and an APPLY_MODEL wrapper runs the reference call of each
  step (the trajectory's latent and conditioning) beside the sample's call, one block at a time
  (`vidinv.attention.Lockstep`: core's own model call in a helper thread).

Nothing here is imported outside ComfyUI (the node module imports it lazily)."""
from __future__ import annotations

import dataclasses
import hashlib
import math
import threading

import torch

from ..vidinv import attention, errors, flow, flowedit, solver
from ..vidinv.models import native
from . import host

CACHE_KEYS = ("easycache", "lazycache")  # core's cache nodes skip forwards: no exact round trip with them
KEY = "vidinv_reference"


# ----------------------------------------------------------------------------- the model

def model_sampling(model):
    """(kind, sigma_data, the sampling object) of a MODEL; kinds whose Euler step the pack does not
    invert are refused by name."""
    import comfy.model_sampling as ms
    sampling = model.get_model_object("model_sampling")
    name = type(sampling).__name__
    if isinstance(sampling, (ms.X0, getattr(ms, "COSMOS_RFLOW", ()))) or not isinstance(sampling, (ms.EPS, ms.CONST)):
        raise errors.InputError(f"this MODEL samples as {name}, which is not one of the samplings the exact "
                                "inversion supports",
                                "Use a flow (CONST: Wan, HunyuanVideo, LTX-Video, Mochi), EPS or V-prediction model.")
    kind = "flow" if isinstance(sampling, ms.CONST) else ("v" if isinstance(sampling, ms.V_PREDICTION) else "eps")
    return kind, float(getattr(sampling, "sigma_data", 1.0)), sampling


def refuse_caches(model, node: str) -> None:
    """Core's cache nodes (EasyCache, LazyCache) skip model calls by estimate: neither an inversion nor a
    reference pass stays exact behind them."""
    keys = {k for kinds in getattr(model, "wrappers", {}).values() for k in kinds}
    found = sorted(k for k in keys if k in CACHE_KEYS)
    if found:
        raise errors.InputError(f"{node}: the MODEL carries {', '.join(found)} (a cache node), which skips model "
                                "calls by estimate; the round trip would not be exact",
                                "Connect the MODEL before the EasyCache / LazyCache node.")


def fingerprint(model) -> str:
    """A MODEL's identity for trajectories: its class, its sampling (kind, shift, sigma range), a few
    weights of the diffusion model and the patches (LoRAs) applied to it."""
    h = hashlib.sha256(type(model.model).__name__.encode())
    sampling = model.get_model_object("model_sampling")
    h.update(repr((type(sampling).__name__, float(getattr(sampling, "shift", 0.0)),
                   float(sampling.sigma_min), float(sampling.sigma_max))).encode())
    params = list(model.model.diffusion_model.named_parameters())
    for name, p in params[:2] + params[-2:]:
        h.update(name.encode())
        h.update(p.detach().flatten()[:64].float().cpu().numpy().tobytes())
    for key in sorted(getattr(model, "patches", {})):
        h.update(key.encode())
        h.update(repr([float(p[0]) for p in model.patches[key] if isinstance(p[0], (int, float))]).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- the inversion

class ConditioningCapture:
    """An APPLY_MODEL wrapper that keeps, per CFG row kind (0 positive, 1 negative), the floating-point
    tensors the model is called with (``c_crossattn``, ``c_concat``, extra conds): that kind's rows (one
    per video of the batch), from the first call that has that kind."""

    def __init__(self):
        self.conds: dict[str, torch.Tensor] = {}

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                 **kwargs):
        kinds = list(transformer_options.get("cond_or_uncond") or [0])
        rows = x.shape[0] // len(kinds)
        for j, kind in enumerate(kinds):
            if any(k.startswith(f"{kind}.") for k in self.conds):
                continue
            for name, value in {"c_concat": c_concat, "c_crossattn": c_crossattn, **kwargs}.items():
                if torch.is_tensor(value) and value.is_floating_point():
                    part = value[j * rows:(j + 1) * rows] if value.shape[:1] == x.shape[:1] else value
                    self.conds[f"{kind}.{name}"] = part.detach().float().cpu().clone()
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


def sampler_class():
    import comfy.samplers

    class InverseSampler(comfy.samplers.Sampler):
        """Core's Euler sampler run backwards: `sample` gets core's denoiser (the guider) and the
        processed latent, inverts every step with the pack's solver and keeps the latents."""

        def __init__(self, settings: solver.Solver, kind: str, sigma_data: float, start=None, after=None):
            self.settings, self.kind, self.sigma_data, self.start, self.after = settings, kind, sigma_data, start, after
            self.latents = self.stats = None

        def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                   disable_pbar=False):
            x0 = latent_image if self.start is None else self.start.to(latent_image)
            grid = native.euler_grid(sigmas.cpu(), self.kind, self.sigma_data)
            s_in = x0.new_ones([x0.shape[0]])

            def denoise(x, i):
                host.check_interrupt()
                return model_wrap(x, sigmas[i] * s_in, model_options=extra_args["model_options"],
                                  seed=extra_args.get("seed"))

            def after(info):
                if self.after is not None:
                    self.after()

            self.latents, self.stats = solver.invert(denoise, x0, grid, self.settings, after)
            return self.latents[-1]

    return InverseSampler


def invert_segment(model, positive, negative, cfg: float, sigmas: torch.Tensor, latent: torch.Tensor,
                   settings: solver.Solver, capture: ConditioningCapture, start=None, after=None):
    """One model's part of the inversion, through core's CFGGuider: (latents cleanest first, stats)."""
    import comfy.patcher_extension as pe
    import comfy.samplers
    kind, sigma_data, _ = model_sampling(model)
    patched = model.clone()
    patched.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, KEY, capture)
    guider = comfy.samplers.CFGGuider(patched)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    inverse = sampler_class()(settings, kind, sigma_data, start, after)
    guider.sample(torch.zeros_like(latent), latent, inverse, sigmas, disable_pbar=True, seed=0)
    return inverse.latents, inverse.stats


def latent_samples(latent: dict, model) -> torch.Tensor:
    """The LATENT's samples with core's empty-latent channel fix (as SamplerCustomAdvanced does)."""
    import comfy.sample
    samples = latent["samples"]
    if getattr(samples, "is_nested", False):
        raise errors.InputError("a nested (multi-part) LATENT is not supported by the inversion",
                                "Invert a single video latent.")
    return comfy.sample.fix_empty_latent_channels(model, samples)


# ----------------------------------------------------------------------------- FlowEdit

def two_prompt_guider():
    import comfy.samplers

    class TwoPromptGuider(comfy.samplers.CFGGuider):
        """Core's CFG over two prompt pairs, conditioned as core conditions any sample: ``branch`` ("target" or
        "source", set by the sampler before each call) picks the pair ("positive" / "negative" or
        "source_positive" / "source_negative") and its scale (``scales``)."""
        branch, scales = "target", {}

        def predict_noise(self, x, timestep, model_options={}, seed=None):
            pre = "" if self.branch == "target" else "source_"
            return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get(pre + "negative"),
                                                    self.conds.get(pre + "positive"), self.scales[self.branch],
                                                    model_options=model_options, seed=seed)

    return TwoPromptGuider


def flow_edit_sampler():
    import comfy.samplers

    class FlowEditSampler(comfy.samplers.Sampler):
        """FlowEdit as core's sampler: `sample` gets the two-prompt guider and the processed clean latent and runs
        `vidinv.flowedit.steps` in the pack's layout (so its noises, drawn from `seed`, are the pack FlowEdit
        node's) up to step `stop`, each velocity ``(x - D) / sigma`` from core's denoised prediction D (flow
        models). `run` ({}) is shared by the samplers of one edit: the first makes the step iterator, a second
        (Wan 2.2's low-noise expert, in its own guider) goes on with it from where the first stopped. Core's
        ``denoise_mask`` (the LATENT's noise_mask, resized by core to the latent) is FlowEdit's edit mask: outside
        it every step keeps the source."""

        def __init__(self, run: dict, stop: int, n_max: int, n_min: int, n_avg: int, seed: int, after=None):
            self.run, self.stop, self.after = run, stop, after
            self.n_max, self.n_min, self.n_avg, self.seed = n_max, n_min, n_avg, seed

        def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                   disable_pbar=False):
            ndim = latent_image.dim()
            s_in = latent_image.new_ones([latent_image.shape[0]])
            self.run["call"] = (model_wrap, extra_args, sigmas, s_in, latent_image)  # what this expert's steps call

            def velocity(branch: str):
                def v(x, j):
                    host.check_interrupt()
                    wrap, extra, sig, ones, like = self.run["call"]
                    wrap.branch = branch
                    x = native.from_pack(x, ndim).to(like)
                    d = wrap(x, sig[j] * ones, model_options=extra["model_options"], seed=extra.get("seed"))
                    return native.to_pack((x - d) / sig[j])
                return v

            if "steps" not in self.run:
                sig = native.check_sigmas(sigmas.cpu())
                mask = None if denoise_mask is None else native.to_pack(denoise_mask)[:, :, :1].to(latent_image)
                self.run["steps"] = flowedit.steps(velocity("source"), velocity("target"),
                                                   native.to_pack(latent_image), flow.steps_grid(sig, sig[:-1]),
                                                   self.n_max, self.n_min, self.n_avg,
                                                   torch.Generator().manual_seed(int(self.seed)), mask)
            for info in self.run["steps"]:
                if self.after is not None:
                    self.after(info)
                self.run["x"] = info["x"]
                if info["i"] + 1 >= self.stop:
                    break
            return native.from_pack(self.run["x"], ndim).to(latent_image)

    return FlowEditSampler


def flow_edit(experts: list, switch_step: int, source, target, negative, source_cfg: float, target_cfg: float,
              sigmas: torch.Tensor, latent: torch.Tensor, n_max: int, n_min: int, n_avg: int, seed: int,
              after=None, noise_mask: torch.Tensor | None = None) -> torch.Tensor:
    """FlowEdit of the clean `latent` (core's layout) with a flow MODEL on core's `sigmas`: the source velocity
    under (`source`, `negative`) at `source_cfg`, the target's under (`target`, `negative`) at `target_cfg`, both
    through core's own CFG and conditioning; the edited latent in core's layout, as a sampler returns it. Two
    `experts` (Wan 2.2): the first runs the steps before `switch_step`, the second the rest, each in its own
    guider, the edit carried over (an expert none of whose steps is in the window is not called). `noise_mask`
    (a LATENT's, 1 = edit): the edit inside it, the source outside, as core's samplers treat it."""
    steps = len(sigmas) - 1
    first, _ = flowedit.window(steps, n_min, n_max, n_avg)
    parts = [(experts[0], steps)] if len(experts) == 1 else [(experts[0], switch_step), (experts[1], steps)]
    run, out = {}, None
    for model, stop in parts:
        if stop <= first:  # the window starts after this expert's steps
            continue
        guider = two_prompt_guider()(model)
        guider.inner_set_conds({"positive": target, "negative": negative, "source_positive": source,
                                "source_negative": negative})
        guider.scales = {"target": float(target_cfg), "source": float(source_cfg)}
        editor = flow_edit_sampler()(run, stop, n_max, n_min, n_avg, seed, after)
        out = guider.sample(torch.zeros_like(latent), latent, editor, sigmas, denoise_mask=noise_mask,
                            disable_pbar=True, seed=seed)
    return out


# ----------------------------------------------------------------------------- the noise

class InvertedNoise:
    """Core's NOISE for SamplerCustomAdvanced: the noise that core's first step turns into the inverted
    x_T exactly (its ``noise_scaling`` solved for the noise, given the LATENT the sampler gets: flow
    models ``sigma n + (1 - sigma) latent``, EPS / V ``n * sqrt(1 + sigma^2) + latent`` at the model's
    highest sigma, else ``n * sigma + latent``)."""

    def __init__(self, x_T: torch.Tensor, model, sigma0: float):
        self.x_T, self.model, self.sigma0, self.seed = x_T, model, float(sigma0), 0

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        latent = input_latent["samples"]
        if tuple(latent.shape) != tuple(self.x_T.shape):
            raise errors.InputError(f"the inverted noise has shape {tuple(self.x_T.shape)}, the sampler's LATENT "
                                    f"{tuple(latent.shape)}", "Give the sampler the latent that was inverted (or an "
                                    "empty latent of its size).")
        kind, _, sampling = model_sampling(self.model)
        base = self.model.model
        lat = base.process_latent_in(latent.float()) if torch.count_nonzero(latent) > 0 else latent.float()
        x_T, s = self.x_T.double(), self.sigma0
        if kind == "flow":
            noise = (x_T - (1.0 - s) * lat.double()) / s
        else:
            max_sigma = float(sampling.sigma_max)
            scale = math.sqrt(1.0 + s * s) if math.isclose(max_sigma, s, rel_tol=1e-5) or s > max_sigma else s
            noise = (x_T - lat.double()) / scale
        return noise.float()


# ----------------------------------------------------------------------------- reference attention

def wan_blocks(model) -> int:
    """The block count of a Wan MODEL; other core models are refused by name (the reference patch
    knows Wan's block structure: self-attention is each block's first attention call)."""
    from comfy.ldm.wan import model as wan_model
    net = model.get_model_object("diffusion_model")
    if type(net) is not wan_model.WanModel:
        name = type(net).__name__
        raise errors.InputError(
            f"Reference Attention (native) supports core's Wan 2.1 / 2.2 models (WanModel); this MODEL is {name}",
            "HunyuanVideo, LTX-Video, Mochi, Cosmos, core's CogVideoX and Wan variants (VACE, camera, S2V, ...) "
            "are not supported yet: their attention blocks differ. Plain inversion and sampling work for them.")
    return len(net.blocks)


@dataclasses.dataclass(eq=False)
class RowInjection(attention.Injection):
    """A sample call's injection where each latent row names its reference row (-1: none)."""
    index: torch.Tensor = None


class ReferencePatch:
    """The state of one patched MODEL: the trajectory, options and chosen blocks; per thread (the
    reference call runs beside the sample's), the block being run (set by its block replacement) and
    whether its self-attention (its first attention call) has run;
    the attention override that was there before (chained: every attention call still goes through it)."""

    def __init__(self, traj, options: attention.ReferenceOptions, blocks: tuple[int, ...]):
        self.traj, self.options, self.blocks, self.previous = traj, options, frozenset(blocks), None
        self.channel = attention.Channel()
        self.local = threading.local()  # per thread (the reference call runs beside the sample's): block, seen
        self.active = set(options.active_steps(traj.steps))
        self.ndim = int(traj.scheduler_config["ndim"])

    # -- installed on a clone
    def install(self, model):
        import comfy.patcher_extension as pe
        patched = model.clone()
        opts = patched.model_options.setdefault("transformer_options", {})
        self.previous = opts.get("optimized_attention_override")
        opts["optimized_attention_override"] = self
        existing = opts.get("patches_replace", {}).get("dit", {})
        for i in sorted(self.blocks):
            patched.set_model_patch_replace(self.marker(i, existing.get(("double_block", i))), "dit", "double_block", i)
        patched.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, KEY, self.apply_model)
        patched.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, KEY, self.outer_sample)
        return patched

    def marker(self, index: int, previous):
        def run_block(args, extra):
            self.local.block, self.local.seen = index, False
            try:
                return previous(args, extra) if previous is not None else extra["original_block"](args)
            finally:
                self.local.block = None
        return run_block

    # -- before sampling: the sampler's sigmas and latent against the trajectory
    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        guider = getattr(executor, "class_obj", None)
        if guider is not None:
            refuse_caches(guider.model_patcher, "Reference Attention (native)")
        check_euler(sampler)
        native.check_sub_run(self.traj.sigmas, native.check_sigmas(sigmas.cpu()))
        want = tuple(native.from_pack(self.traj.clean, self.ndim).shape)
        if tuple(latent_image.shape) != want:
            raise errors.InputError(f"the sampler's latent has shape {tuple(latent_image.shape)}, the trajectory's "
                                    f"{want}", "Sample the latent that was inverted (or an empty latent of its size).")
        return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)

    # -- each model call: the sample's call with injection, the reference call beside it
    def apply_model(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                    **kwargs):
        step = native.step_of(self.traj.sigmas, float(t.flatten()[0]))
        if step is None or step not in self.active or self.options.weight == 0:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        kinds = list(transformer_options.get("cond_or_uncond") or [0])
        rows = x.shape[0] // len(kinds)
        ref_kinds, chunk = [], []
        for kind in kinds:
            if kind == 1 and self.options.rows == "conditional":
                chunk.append(-1)
                continue
            ref = kind if any(k.startswith(f"{kind}.") for k in self.traj.model_conds) else 0
            if ref not in ref_kinds:
                ref_kinds.append(ref)
            chunk.append(ref_kinds.index(ref))
        if not ref_kinds:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        latent = native.from_pack(self.traj.latent_for_step(step), self.ndim).to(x.device, x.dtype)
        if latent.shape[0] != rows:
            raise errors.InputError(f"the sampler runs {rows} video(s) per row kind, the trajectory holds "
                                    f"{latent.shape[0]}", "Sample the batch that was inverted.")
        named = reference_conds(self.traj.model_conds, ref_kinds, {"c_concat": c_concat, "c_crossattn": c_crossattn,
                                                                   **kwargs}, x.device)
        ref_options = dict(transformer_options, cond_or_uncond=list(ref_kinds))

        def reference():
            executor(latent.repeat(len(ref_kinds), *[1] * (latent.dim() - 1)), t[:rows].repeat(len(ref_kinds)),
                     named.pop("c_concat"), named.pop("c_crossattn"), None, ref_options, **named)

        index = torch.tensor([c * rows + r if c >= 0 else -1 for c in chunk for r in range(rows)])
        with attention.guided(self.channel, self.blocks, reference, index >= 0, self.options.weight,
                              injection=RowInjection, index=index):
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    # -- every attention call of the patched model
    def __call__(self, func, *args, **kwargs):
        def inner(*a, **k):
            return self.previous(func, *a, **k) if self.previous is not None else func(*a, **k)

        block = getattr(self.local, "block", None)
        if block is None or self.local.seen:
            return inner(*args, **kwargs)
        self.local.seen = True  # the block's first attention call: its self-attention
        q, k, v, *rest = args
        heads = kwargs["heads"] if "heads" in kwargs else rest[0]
        mask = kwargs.get("mask", rest[1] if len(rest) > 1 else None)
        if kwargs.get("skip_reshape") or mask is not None:
            raise RuntimeError("Reference Attention (native): an attention layout this patch does not know "
                               "(pre-split heads or a mask) in a Wan self-attention")
        recording = self.channel.recording(block)
        if recording is not None:
            recording.record(block, k, v)
        state = self.channel.injection(block)
        if not isinstance(state, RowInjection):
            return inner(*args, **kwargs)
        k_ref, v_ref, _ = state.reference(block)
        on = state.index >= 0
        out = None
        if bool((~on).any()):
            out = torch.empty(q.shape[0], q.shape[1], v.shape[-1], device=q.device, dtype=q.dtype)
            out[~on] = inner(q[~on], k[~on], v[~on], *rest, **kwargs)
        q1, k1, v1, unpad = attention.keys_with_reference(q[on], k[on], v[on], k_ref[state.index[on]],
                                                          v_ref[state.index[on]], heads, state.weight)
        joined = unpad(inner(q1, k1, v1, *rest, **kwargs))
        if out is None:
            return joined
        out[on] = joined
        return out


def check_euler(sampler) -> None:
    """The trajectory is the path of core's `euler` sampler: another sampler (or one with churn / added
    noise) leaves it, so the reference would be of other latents than the sample's."""
    from comfy.k_diffusion import sampling
    function = getattr(sampler, "sampler_function", None)
    if function is not sampling.sample_euler or getattr(sampler, "extra_options", {}).get("s_churn", 0):
        name = getattr(function, "__name__", type(sampler).__name__).removeprefix("sample_")
        raise errors.InputError(f"Reference Attention (native) follows the path of core's 'euler' sampler, the one the "
                                f"trajectory inverts; this sampler is {name!r}",
                                "Pick 'euler' in KSamplerSelect for the patched MODEL.")


def reference_conds(conds: dict, ref_kinds: list, sample: dict, device) -> dict:
    """The model-call arguments of a reference pass: for each argument the sample's call has, the
    trajectory's tensors of each reference row kind, one after another (text of unequal length is
    repeated to a common length, as core batches CFG rows); arguments the trajectory did not keep
    (non-tensors) come from the sample's call."""
    out = {}
    for name, value in sample.items():
        parts = [conds.get(f"{kind}.{name}") for kind in ref_kinds]
        if all(p is None for p in parts):
            if torch.is_tensor(value) and value.is_floating_point():
                raise errors.InputError(f"the sampler's conditioning has {name!r}, which the inversion's did not",
                                        "Sample with conditioning of the kind the video was inverted with.")
            out[name] = value
            continue
        if any(p is None for p in parts):
            raise errors.InputError(f"the trajectory keeps {name!r} for some CFG rows only",
                                    "Invert the video again.")
        if name == "c_crossattn" and len({p.shape[1] for p in parts}) > 1:
            length = math.lcm(*(p.shape[1] for p in parts))
            parts = [p.repeat(1, length // p.shape[1], 1) for p in parts]
        dtype = value.dtype if torch.is_tensor(value) else parts[0].dtype
        out[name] = torch.cat(parts).to(device, dtype)
    return out
