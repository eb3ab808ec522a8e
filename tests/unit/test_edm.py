"""EDM / Euler math of `vidinv.edm` against diffusers' EulerDiscreteScheduler with SVD's config,
and the exact inverse on an analytic (Gaussian-mixture) denoiser."""
import math

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from tests.tiny_svd import SCHEDULER
from vidinv import edm, solver


def karras(n, lo=0.002, hi=700.0, rho=7.0):
    ramp = [i / (n - 1) for i in range(n)] if n > 1 else [0.0]
    return [(hi ** (1 / rho) + r * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for r in ramp] + [0.0]


@pytest.mark.parametrize("steps", [1, 2, 14, 25, 50])
def test_grid_is_the_schedulers(steps):
    grid = edm.grid_from_config(SCHEDULER, steps)
    sched = EulerDiscreteScheduler(**SCHEDULER)
    sched.set_timesteps(steps)
    assert grid.steps == steps and grid.prediction_type == "v_prediction"
    assert list(grid.sigmas) == [float(s) for s in sched.sigmas]
    assert list(grid.timesteps) == [float(t) for t in sched.timesteps]
    # independently: Karras sigmas 700 -> 0.002 (rho 7), then 0; model time log(sigma) / 4
    assert grid.sigmas[-1] == 0.0 and grid.init_noise_sigma == pytest.approx(math.sqrt(700.0 ** 2 + 1), rel=1e-6)
    assert grid.sigmas == pytest.approx(karras(steps), rel=1e-6)
    assert grid.timesteps == pytest.approx([edm.model_time(s) for s in grid.sigmas[:-1]], rel=1e-6, abs=1e-6)


def test_grid_rejects_bad_settings():
    with pytest.raises(ValueError, match="between 1 and 1000"):
        edm.grid_from_config(SCHEDULER, 0)
    with pytest.raises(ValueError, match="prediction_type"):
        edm.grid_from_config({**SCHEDULER, "prediction_type": "sample"}, 10)


def test_preconditioning_matches_scheduler_step():
    """D = c_skip x + c_out F is the scheduler's pred_original_sample; the input scale is its
    scale_model_input; the Euler step is the scheduler's prev_sample."""
    sched = EulerDiscreteScheduler(**SCHEDULER)
    sched.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    x, f = torch.randn(2, 3, 4, 5, 5, generator=g) * 30, torch.randn(2, 3, 4, 5, 5, generator=g)
    for i in range(5):
        t = sched.timesteps[i]
        sigma, nxt = float(sched.sigmas[i]), float(sched.sigmas[i + 1])
        scaled = sched.scale_model_input(x, t)
        assert torch.allclose(scaled, x * edm.c_in(sigma), rtol=1e-6, atol=0)
        prev, pred = sched.step(f, t, x, return_dict=False)
        d = edm.denoised(x, f, sigma)
        assert torch.allclose(pred, d.float(), rtol=1e-5, atol=1e-5)
        a, b = edm.coefficients(sigma, nxt)
        assert torch.allclose(prev, solver.step(x, d, a, b), rtol=1e-5, atol=1e-5 * float(x.abs().max()))
        x = prev


def fake_network(x_in: torch.Tensor, t: float) -> torch.Tensor:
    """A deterministic nonlinear stand-in for the UNet: F(c_in x, c_noise)."""
    return torch.tanh(1.3 * x_in + 0.2 * x_in.roll(1, -1)) * (1 + 0.1 * math.sin(t)) - 0.05 * t


@pytest.mark.parametrize("steps", [4, 25])
def test_sample_equals_the_diffusers_euler_loop(steps):
    grid = edm.grid_from_config(SCHEDULER, steps)
    noise = torch.randn(1, 3, 4, 6, 6, generator=torch.Generator().manual_seed(1))

    sched = EulerDiscreteScheduler(**SCHEDULER)
    sched.set_timesteps(steps)
    latents = noise * grid.init_noise_sigma
    for t in sched.timesteps:
        out = fake_network(sched.scale_model_input(latents, t), float(t))
        latents = sched.step(out, t, latents, s_churn=0.0).prev_sample

    def denoise(x, i):
        sigma = grid.sigmas[i]
        return edm.denoised(x, fake_network(x * edm.c_in(sigma), grid.timesteps[i]), sigma)

    seen = []
    ours = edm.sample(denoise, noise * grid.init_noise_sigma, grid.sigmas, callback=lambda d: seen.append(d["i"]))
    assert seen == list(range(steps))
    assert float((ours - latents).norm() / latents.norm()) < 1e-5


# ----------------------------------------------------------------------------- analytic round trip

class Mixture:
    """Data = a mixture of isotropic Gaussians; D(x; sigma) = E[x_0 | x] in closed form (nonlinear
    through the posterior component weights)."""

    def __init__(self, dim, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.mu = torch.randn(3, dim, generator=g, dtype=torch.float64) * 1.5
        self.s = torch.tensor([0.3, 0.6, 1.2], dtype=torch.float64)
        self.logw = torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))

    def __call__(self, x, sigma):
        flat = x.flatten(1)  # [B, dim]
        var = self.s ** 2 + sigma ** 2  # [K]
        d2 = ((flat[:, None, :] - self.mu[None]) ** 2).sum(-1)  # [B, K]
        logp = self.logw - 0.5 * d2 / var - 0.5 * flat.shape[1] * torch.log(var)
        w = torch.softmax(logp, dim=1)  # [B, K]
        shrink = self.s ** 2 / var  # [K]
        means = self.mu[None] + shrink[None, :, None] * (flat[:, None, :] - self.mu[None])  # [B, K, dim]
        return (w[:, :, None] * means).sum(1).view_as(x)

    def sample(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        k = torch.multinomial(self.logw.exp(), n, replacement=True, generator=g)
        return self.mu[k] + self.s[k, None] * torch.randn(n, self.mu.shape[1], generator=g, dtype=torch.float64)


@pytest.mark.parametrize("steps", [8, 25])
def test_round_trip_on_an_analytic_denoiser(steps):
    grid = edm.grid_from_config(SCHEDULER, steps)
    data = Mixture(dim=2 * 3 * 4)
    x0 = data.sample(3).view(3, 2, 3, 2, 2)

    def denoise(x, i):
        return data(x, grid.sigmas[i])

    latents, stats = edm.invert(denoise, x0, grid.sigmas, iters=10, tol=1e-12)
    assert len(latents) == steps + 1 and latents[-1].dtype == torch.float64
    noise = latents[-1]
    assert 0.3 < float(noise.std() / grid.init_noise_sigma) < 3  # it is noise at sigma_max, not a clean latent
    back = edm.sample(denoise, noise, grid.sigmas)
    err = float((back - x0).norm() / x0.norm())
    assert err <= 1e-6, err
    # every intermediate latent is reproduced too: sampling from x_k lands on x_0
    for k in (1, steps // 2):
        mid = edm.sample(denoise, latents[k], grid.sigmas, start=steps - k)
        assert float((mid - x0).norm() / x0.norm()) <= 1e-6
    # the naive inverse (no refinement) is far worse: the bound is not vacuous
    naive, _ = edm.invert(denoise, x0, grid.sigmas, iters=0)
    assert float((edm.sample(denoise, naive[-1], grid.sigmas) - x0).norm() / x0.norm()) > 100 * max(err, 1e-9)


def test_skip_split_is_well_conditioned_where_the_plain_form_diverges():
    """On SVD's 25-step grid, the plain fixed point x = (x_next - b D(x)) / a of the second-last step
    has a contraction factor of about sigma_i / sigma_{i+1} - 1 > 1; the skip-split form does not."""
    grid = edm.grid_from_config(SCHEDULER, 25)
    i = grid.steps - 2
    sigma, nxt = grid.sigmas[i], grid.sigmas[i + 1]
    a, b = edm.coefficients(sigma, nxt)
    assert b / a > 2.5  # |dG/dx| of the plain form, with dD/dx ~ 1 near the clean end
    skip = edm.c_skip(sigma)
    # skip-split factor b |c_out c_in| |dF| / (a + b c_skip), with |dF| ~ 1
    assert b * abs(edm.c_out(sigma) * edm.c_in(sigma)) / (a + b * skip) < 0.05


def test_one_step_inverts_and_a_non_finite_output_stops_at_its_step():
    """One Euler step (sigma_max -> 0) is invertible in the skip-split form (a' = c_skip > 0); a
    NaN from the model is an error naming the step, in inversion and in sampling."""
    from vidinv import errors
    data = Mixture(dim=2 * 3 * 4)
    x0 = data.sample(3).view(3, 2, 3, 2, 2)
    grid = edm.grid_from_config(SCHEDULER, 1)
    latents, stats = edm.invert(lambda x, i: data(x, grid.sigmas[i]), x0, grid.sigmas, iters=20, tol=1e-12)
    assert math.isfinite(stats[0].residual) and torch.isfinite(latents[-1]).all()
    back = edm.sample(lambda x, i: data(x, grid.sigmas[i]), latents[-1], grid.sigmas)
    assert float((back - x0).norm() / x0.norm()) <= max(1e-6, 10 * stats[0].residual)

    grid = edm.grid_from_config(SCHEDULER, 8)

    def poisoned(x, i):
        return data(x, grid.sigmas[i]) * (math.nan if i == 5 else 1.0)

    # inversion step k (cleanest first) calls the model at grid point 7 - k: point 5 is step 3
    with pytest.raises(errors.InputError, match=r"inversion step 3 of 8 .* non-finite"):
        edm.invert(poisoned, x0, grid.sigmas, iters=4, tol=1e-9)
    with pytest.raises(errors.InputError, match=r"sampling step 6 of 8 .* non-finite latent"):
        edm.sample(poisoned, torch.randn_like(x0) * grid.init_noise_sigma, grid.sigmas)
