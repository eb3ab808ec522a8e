"""The native path's pure parts (`vidinv.models.native`, `vidinv.attention.keys_with_reference`): core's Euler
step as an affine step and its exact inverse, the sigmas a trajectory accepts, the experts' steps, the
reference keys joined for a fixed attention function, and the native trajectory kind in a file."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from vidinv import attention, errors, solver, trajectory
from vidinv.models import native

SIGMAS = [1.0, 0.8, 0.55, 0.3, 0.1, 0.0]


def core_euler(x, denoised, sigma, sigma_next):
    """Core's `sample_euler` step (s_churn 0), written as core writes it."""
    d = (x - denoised) / sigma
    return x + d * (sigma_next - sigma)


@pytest.mark.parametrize("kind", native.SAMPLING_KINDS)
def test_the_grid_is_cores_euler_step(kind):
    grid = native.euler_grid(SIGMAS, kind)
    g = torch.Generator().manual_seed(0)
    x, D = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    for i, p in enumerate(grid.points):
        assert torch.allclose(solver.step(x, D, p.a, p.b), core_euler(x, D, SIGMAS[i], SIGMAS[i + 1]), atol=1e-12)
    assert grid.timesteps == tuple(SIGMAS[:-1]) and grid.steps == 5
    skips = [p.skip for p in grid.points]
    assert skips == ([1.0] * 5 if kind != "v" else [1 / (s * s + 1) for s in SIGMAS[:-1]])


@pytest.mark.parametrize("kind", native.SAMPLING_KINDS)
def test_inverse_of_cores_euler_reconstructs(kind):
    """A smooth stand-in denoiser D(x, i) = c_skip x + R(x): invert on the grid, sample back with core's
    step, land on x0."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 6, generator=g, dtype=torch.float64) * 0.2
    grid = native.euler_grid(SIGMAS, kind)

    def denoise(x, i):
        return grid.points[i].skip * x + 0.3 * torch.tanh(x @ w) * SIGMAS[i]

    x0 = torch.randn(2, 6, generator=g, dtype=torch.float64)
    latents, stats = solver.invert(denoise, x0, grid, solver.Solver(iters=30, tol=1e-12))
    x = latents[-1]
    for i in range(grid.steps):
        x = core_euler(x, denoise(x, i), SIGMAS[i], SIGMAS[i + 1])
    assert float((x - x0).norm() / x0.norm()) < 1e-10 and len(stats) == 5


def test_sigmas_are_checked():
    assert native.check_sigmas(torch.tensor(SIGMAS)) == pytest.approx(SIGMAS)
    for bad, match in (([1.0], "at least two"), ([1.0, float("nan")], "not all finite"),
                       ([0.5, 0.8, 0.0], "strictly decreasing"), ([1.0, 0.5, -0.1], "strictly decreasing")):
        with pytest.raises(errors.InputError, match=match):
            native.check_sigmas(bad)


def test_a_sampler_may_run_the_whole_grid_or_a_contiguous_part():
    assert native.check_sub_run(SIGMAS, SIGMAS) == 0
    assert native.check_sub_run(SIGMAS, SIGMAS[:3]) == 0 and native.check_sub_run(SIGMAS, SIGMAS[2:]) == 2
    with pytest.raises(errors.InputError, match="not the trajectory's"):
        native.check_sub_run(SIGMAS, [1.0, 0.7, 0.0])
    assert native.step_of(SIGMAS, 0.55 * (1 + 1e-7)) == 2 and native.step_of(SIGMAS, 0.0) is None


def test_expert_steps():
    assert native.expert_steps(5, 0, 1) == [0] * 5
    assert native.expert_steps(5, 2, 2) == [0, 0, 1, 1, 1]
    for bad in (0, 5, 2.5):
        with pytest.raises(errors.InputError, match="switch_step"):
            native.expert_steps(5, bad, 2)


def explicit(q, k, v, k_ref, v_ref, heads, weight):
    """softmax(q k^T / sqrt(d) + log(weight) on the reference keys) v, per head, written out."""
    b, lq, width = q.shape
    d = width // heads
    split = (lambda t: t.view(b, -1, heads, d).transpose(1, 2))
    kk, vv = torch.cat([split(k), split(k_ref)], 2), torch.cat([split(v), split(v_ref)], 2)
    logits = split(q) @ kk.transpose(-1, -2) / math.sqrt(d)
    logits[..., k.shape[1]:] += math.log(weight)
    return (logits.softmax(-1) @ vv).transpose(1, 2).reshape(b, lq, width)


def plain_attention(q, k, v, heads):
    """An attention function of ComfyUI's form ([B, L, heads * d], its own 1/sqrt(head width))."""
    b, lq, width = q.shape
    split = (lambda t: t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2))
    return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, lq, -1)


@pytest.mark.parametrize("weight", [1.0, 4.0, 0.25])
def test_reference_keys_through_a_fixed_attention_function(weight):
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 7, 16, generator=g, dtype=torch.float64) for _ in range(3))
    k_ref, v_ref = (torch.randn(2, 5, 16, generator=g, dtype=torch.float64) for _ in range(2))
    q1, k1, v1, unpad = attention.keys_with_reference(q, k, v, k_ref, v_ref, 2, weight)
    got = unpad(plain_attention(q1, k1, v1, 2))
    assert torch.allclose(got, explicit(q, k, v, k_ref, v_ref, 2, weight), atol=1e-10)
    # DESIGN fact 5: a reference that duplicates the sample's own keys and values changes nothing
    q1, k1, v1, unpad = attention.keys_with_reference(q, k, v, k, v, 2, weight)
    assert torch.allclose(unpad(plain_attention(q1, k1, v1, 2)), plain_attention(q, k, v, 2), atol=1e-10)


def native_trajectory(**changes):
    g = torch.Generator().manual_seed(3)
    fields = dict(
        latents=torch.randn(4, 1, 2, 16, 4, 4, generator=g), timesteps=SIGMAS[:3], sigmas=[1.0, 0.6, 0.2, 0.0],
        scheduler_config={"sampling": "flow", "sigma_data": 1.0, "ndim": 5, "model": "WAN21"},
        model_fingerprint="f" * 16, model_name="WAN21", prompt="", negative_prompt="",
        embeds=torch.zeros(native.PLACEHOLDER), negative_embeds=torch.zeros(native.PLACEHOLDER), guidance=5.0,
        dynamic_cfg=False, iterations=10, tolerance=1e-5, residuals=[1e-6] * 3, calls=[3] * 3,
        model_conds={"0.c_crossattn": torch.randn(1, 12, 8, generator=g), "1.c_crossattn": torch.randn(1, 7, 8)},
        extra={"experts": ["f" * 16], "switch_step": 0}, family=native.NAME)
    fields["timesteps"] = fields["sigmas"][:3]
    return trajectory.Trajectory(**{**fields, **changes})


def test_a_native_trajectory_saves_and_loads_with_its_conditioning(tmp_path):
    traj = native_trajectory()
    trajectory.validate(traj)
    back = trajectory.load(traj.save(tmp_path / "native.safetensors"))
    assert back.family == native.NAME and back.sigmas == traj.sigmas and torch.equal(back.latents, traj.latents)
    assert set(back.model_conds) == {"0.c_crossattn", "1.c_crossattn"}
    assert all(torch.equal(back.model_conds[k], traj.model_conds[k]) for k in traj.model_conds)
    assert back.summary()["sampling"] == "flow" and back.summary()["experts"] == 1
    from safetensors import safe_open
    import json
    with safe_open(str(tmp_path / "native.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["vidinv"])["version"] == native.VERSION


def test_native_fields_are_checked():
    for changes, match in (({"model_conds": None}, "model_conds"),
                           ({"scheduler_config": {"sampling": "ddim", "ndim": 5}}, "sampling"),
                           ({"sigmas": [1.0, 0.6, 0.7, 0.0]}, "strictly decreasing"),
                           ({"extra": {"experts": ["a", "b"], "switch_step": 7}}, "switch_step"),
                           ({"extra": {"experts": "f"}}, "experts")):
        with pytest.raises(errors.InputError, match=match):
            trajectory.validate(native_trajectory(**changes))
    with pytest.raises(errors.InputError, match="model_conds belong to ComfyUI-native"):
        trajectory.validate(dataclasses.replace(native_trajectory(), family="wan"))


def test_a_native_trajectory_is_refused_by_the_pack_models_nodes():
    class Model:
        family, fingerprint, name = "wan", "f" * 16, "tiny"
    with pytest.raises(errors.InputError, match="ComfyUI-native trajectory"):
        native_trajectory().check_model(Model())
