"""The DDIM grid, step and exact inverse against diffusers' own schedulers."""
import math

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, DDIMScheduler

from vidinv import ddim, errors, solver

COG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
           rescale_betas_zero_snr=True, snr_shift_scale=3.0, timestep_spacing="trailing", set_alpha_to_one=True,
           prediction_type="v_prediction", clip_sample=False)
SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
          timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, prediction_type="epsilon",
          clip_sample=False)


@pytest.mark.parametrize("shift", [3.0, 1.0])
@pytest.mark.parametrize("steps", [50, 20, 30, 7, 1])
def test_cogvideox_step_matches_scheduler(shift, steps):
    cfg = dict(COG, snr_shift_scale=shift)
    ref = CogVideoXDDIMScheduler(**cfg)
    ref.set_timesteps(steps)
    sch = ddim.schedule_from_config(cfg)
    assert ddim.timesteps(sch, steps) == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    for t, p in ddim.grid(sch, steps):
        out = torch.randn(x.shape, generator=g, dtype=torch.float64)
        expected = ref.step(out, t, x, return_dict=False)[0]
        a, b = ddim.coefficients(sch, t, p)
        got = a * x + b * out
        assert torch.allclose(got, expected, rtol=1e-9, atol=1e-9), (t, p)
        x = expected


def test_schedule_keeps_the_shift_that_ddim_inverse_scheduler_drops():
    """DESIGN fact 1: the generic inverse scheduler loses snr_shift_scale; we do not."""
    from diffusers import DDIMInverseScheduler
    ours = ddim.schedule_from_config(COG)
    naive = DDIMInverseScheduler(**COG)
    assert abs(ours.alpha_bar(500) - float(naive.alphas_cumprod[500])) > 0.05
    assert abs(ours.alpha_bar(500) - float(CogVideoXDDIMScheduler(**COG).alphas_cumprod[500])) < 1e-12


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_epsilon_step_matches_ddim_scheduler(spacing):
    cfg = dict(SD, timestep_spacing=spacing)
    ref = DDIMScheduler(**cfg)
    ref.set_timesteps(25)
    sch = ddim.schedule_from_config(cfg)
    assert ddim.timesteps(sch, 25) == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, generator=g, dtype=torch.float64)
    for t, p in ddim.grid(sch, 25):
        out = torch.randn(x.shape, generator=g, dtype=torch.float64)
        expected = ref.step(out, t, x, eta=0.0, return_dict=False)[0]
        a, b = ddim.coefficients(sch, t, p)
        # DDIMScheduler builds its betas in float32, we in float64 like CogVideoXDDIMScheduler
        assert torch.allclose(a * x + b * out, expected, rtol=1e-5, atol=1e-5)
        x = expected


def test_previous_point_when_steps_do_not_divide_1000():
    sch = ddim.schedule_from_config(COG)
    g = ddim.grid(sch, 30)
    assert g[0] == (999, 966) and g[1][0] == 966
    assert any(p != nxt for (_, p), (nxt, _) in zip(g, g[1:])), "30 steps: the step lands off the next grid point"
    assert g[-1][1] < 0  # the last step lands past the clean end, where alpha-bar is 1
    assert sch.alpha_bar(g[-1][1]) == 1.0


def test_step_inverse_algebra_is_identity():
    """sampler(inverse(x_p)) == x_p for a fixed model output, on every step of the grid."""
    sch = ddim.schedule_from_config(COG)
    g = torch.Generator().manual_seed(2)
    for t, p in ddim.grid(sch, 50):
        a, b = ddim.coefficients(sch, t, p)
        x_p = torch.randn(64, generator=g, dtype=torch.float64)
        out = torch.randn(64, generator=g, dtype=torch.float64)
        x_t = (x_p - b * out) / a
        assert torch.allclose(a * x_t + b * out, x_p, rtol=0, atol=1e-12)


def test_zero_terminal_snr_epsilon_is_refused():
    sch = ddim.schedule_from_config(dict(COG, prediction_type="epsilon"))
    with pytest.raises(ValueError, match="v_prediction"):
        ddim.coefficients(sch, 999, 979)


def test_bad_steps_refused():
    sch = ddim.schedule_from_config(COG)
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
            ddim.timesteps(sch, bad)


def toy_denoiser(scale=0.8, seed=3, dim=32):
    """A smooth nonlinear map standing in for a model (float64)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, dim, generator=g, dtype=torch.float64) * scale / math.sqrt(dim)

    def denoise(x, t):
        return torch.tanh(x @ w.to(x.dtype)) * (1 + t / 1000)
    return denoise


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
@pytest.mark.parametrize("memory", [0, 5])
def test_round_trip_exact_on_toy_model(prediction, memory):
    cfg = dict(COG, prediction_type=prediction, rescale_betas_zero_snr=prediction == "v_prediction")
    sch = ddim.schedule_from_config(cfg)
    den = toy_denoiser()
    x0 = torch.randn(4, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    lat, stats = ddim.invert(den, x0, sch, 20, iters=30, tol=1e-14, memory=memory, damping=1.0)
    back = ddim.sample(den, lat[-1], sch, 20)
    assert len(lat) == 21 and len(stats) == 20
    err = float((back - x0).norm() / x0.norm())
    assert back.dtype == torch.float64 and err < 1e-10


def test_invert_step_exact_in_float64():
    sch = ddim.schedule_from_config(COG)
    den = toy_denoiser(scale=1.5)
    t, p = ddim.grid(sch, 50)[-1]  # the stiff clean end
    a, b = ddim.coefficients(sch, t, p)
    x_p = torch.randn(8, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    for memory in (0, 5):
        x_t, st = solver.invert_step(x_p, den, t, a, b, iters=40, tol=0, memory=memory, damping=1.0)
        resid = float(((a * x_t + b * den(x_t, t)) - x_p).norm() / x_p.norm())
        assert resid < 1e-12, (memory, resid, st.history[-3:])


def test_half_precision_latents_are_promoted_to_float32():
    sch = ddim.schedule_from_config(COG)
    den = toy_denoiser()
    x0 = torch.randn(2, 32, generator=torch.Generator().manual_seed(8)).to(torch.bfloat16)
    lat, _ = ddim.invert(den, x0, sch, 5, iters=2)
    assert all(x.dtype == torch.float32 for x in lat)
    assert ddim.sample(den, lat[-1], sch, 5).dtype == torch.float32


def test_anderson_beats_plain_iteration_on_a_stiff_map():
    """A map whose fixed-point contraction reaches 0.97 (a trained model near the clean end)."""
    sch = ddim.schedule_from_config(COG)
    t, p = ddim.grid(sch, 50)[-2]
    a, b = ddim.coefficients(sch, t, p)
    g = torch.Generator().manual_seed(6)
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=g, dtype=torch.float64))
    m = q @ torch.diag(torch.linspace(0.5, 0.97, 64, dtype=torch.float64)) @ q.T * (a / abs(b))

    def den(x, t):
        return x @ m

    x_p = torch.randn(4, 64, generator=g, dtype=torch.float64)
    _, plain = solver.invert_step(x_p, den, t, a, b, iters=10, memory=0, damping=1.0)
    _, anderson = solver.invert_step(x_p, den, t, a, b, iters=10, memory=5, damping=1.0)
    assert anderson.residual < plain.residual / 10


def test_early_stop_on_tolerance_counts_calls():
    sch = ddim.schedule_from_config(COG)
    den = toy_denoiser(scale=0.3)
    t, p = ddim.grid(sch, 50)[0]
    a, b = ddim.coefficients(sch, t, p)
    x_p = torch.randn(4, 32, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    _, st = solver.invert_step(x_p, den, t, a, b, iters=50, tol=1e-4)
    assert st.residual <= 1e-4 and st.calls == 1 + len(st.history) and st.calls < 20
    naive_x, naive = solver.invert_step(x_p, den, t, a, b, iters=0)
    # no refinement: the residual is that of x_p (whose G is the returned iterate), never NaN
    assert naive.calls == 1 and naive.history == []
    assert naive.residual == pytest.approx(float(solver._rel_rows(naive_x - x_p, naive_x).max()), rel=1e-12)
    assert naive.residual > 1e-4


def test_pooled_budget_keeps_the_average_and_feeds_the_stiff_end():
    """With a tolerance the clean end may borrow, but leaves half the average to every later step;
    the total never exceeds steps * (1 + iters)."""
    steps, iters = 50, 10
    first = solver.step_budget(steps, 0, iters, 0, 1e-5, 200)
    assert first == min(200, steps * (1 + iters) - 49 * 5 - 1)  # half the average kept for each later step
    assert solver.step_budget(6, 0, 20, 0, 1e-7, 200) == 6 * 21 - 5 * 10 - 1  # few steps: no starving the rest
    assert solver.step_budget(steps, 0, iters, 0, 0.0, 200) == iters  # no tolerance: fixed
    used = 0
    for k in range(steps):  # worst case: every step spends its whole allowance
        used += 1 + solver.step_budget(steps, k, iters, used, 1e-5, 200)
    assert used <= steps * (1 + iters)


def test_pooled_inversion_spends_where_it_is_stiff():
    sch = ddim.schedule_from_config(COG)
    den = toy_denoiser(scale=0.5)
    x0 = torch.randn(2, 32, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    lat, stats = ddim.invert(den, x0, sch, 20, iters=8, tol=1e-11, damping=1.0)
    assert sum(s.calls for s in stats) <= 20 * 9
    assert float((ddim.sample(den, lat[-1], sch, 20) - x0).norm() / x0.norm()) < 1e-9


def counting(den):
    calls = []

    def wrapped(x, t):
        calls.append(t)
        return den(x, t)
    return wrapped, calls


def test_one_step_from_zero_snr_is_refused_before_any_model_call():
    """One step from a zero-terminal-SNR start is x_0 = the model's clean prediction (a = 0): no
    noise maps back, so the inversion refuses it instead of returning inf/NaN."""
    sch = ddim.schedule_from_config(COG)
    assert ddim.coefficients(sch, *ddim.grid(sch, 1)[0])[0] == 0.0
    den, calls = counting(toy_denoiser())
    x0 = torch.randn(2, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for memory in (0, 5):
        with pytest.raises(errors.InputError, match="2 or more steps"):
            ddim.invert(den, x0, sch, 1, iters=10, memory=memory)
    assert calls == []
    assert torch.isfinite(ddim.sample(den, x0, sch, 1)).all()  # sampling one step is fine
    gentle = toy_denoiser(scale=0.2)  # two steps invert (the clean end's contraction is |b| / a x 0.2 = 0.6)
    lat, _ = ddim.invert(gentle, x0, sch, 2, iters=60, tol=1e-13)
    assert float((ddim.sample(gentle, lat[-1], sch, 2) - x0).norm() / x0.norm()) < 1e-10


def test_one_step_is_exact_where_the_schedule_keeps_signal():
    sch = ddim.schedule_from_config(SD)
    den = toy_denoiser()
    x0 = torch.randn(3, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lat, stats = ddim.invert(den, x0, sch, 1, iters=30, tol=1e-13)
    assert stats[0].residual <= 1e-13
    assert float((ddim.sample(den, lat[-1], sch, 1) - x0).norm() / x0.norm()) < 1e-10


def poisoned(den, bad_t):
    def wrapped(x, t):
        out = den(x, t)
        return out * math.nan if t == bad_t else out
    return wrapped


@pytest.mark.parametrize("memory", [0, 5])
@pytest.mark.parametrize("iters", [0, 3])
def test_a_non_finite_model_output_stops_the_inversion_at_its_step(memory, iters):
    sch = ddim.schedule_from_config(COG)
    grid = list(reversed(ddim.grid(sch, 6)))  # cleanest first: inversion step k inverts grid[k]
    den = poisoned(toy_denoiser(), grid[2][0])
    x0 = torch.randn(2, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with pytest.raises(errors.InputError, match=rf"inversion step 3 of 6 \(timestep {grid[2][1]} -> {grid[2][0]}\)"):
        ddim.invert(den, x0, sch, 6, iters=iters, memory=memory, tol=1e-9)


def test_a_non_finite_model_output_stops_sampling_at_its_step():
    sch = ddim.schedule_from_config(COG)
    t = ddim.timesteps(sch, 6)[4]
    x = torch.randn(2, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with pytest.raises(errors.InputError, match=rf"sampling step 5 of 6 \(timestep {t}\) gave a non-finite latent"):
        ddim.sample(poisoned(toy_denoiser(), t), x, sch, 6)



# ----------------------------------------------------------------------------- predicted first iterates (issue 34)

def test_a_predicted_start_costs_no_call_and_an_exact_one_converges_in_one():
    """The first iterate predicted from the last two steps' outputs costs no model call: with a
    model output that is independent of x and linear in the step index, the linear extrapolation
    is exact, so every step from the third on stops after its one call (the naive start needs two:
    G(x_p), then the call that shows its residual); the clean end (nothing to predict from) and the
    step after it (one output: reused, not exact here) take two each."""
    sch = ddim.schedule_from_config(COG)
    g = torch.Generator().manual_seed(11)
    u, w = torch.randn(2, 32, generator=g, dtype=torch.float64)
    grid = ddim.sampler_grid(sch, 12)
    index = {t: i for i, t in enumerate(grid.timesteps)}

    def den(x, t):
        return (u + index[t] * w).expand_as(x).clone()

    counted, calls = counting(den)
    x0 = torch.randn(3, 32, generator=g, dtype=torch.float64)
    lat, stats = ddim.invert(counted, x0, sch, 12, iters=10, tol=1e-12, damping=1.0)
    assert [s.calls for s in stats] == [2, 2] + [1] * 10
    assert len(calls) == 14 and all(s.calls == 1 + len(s.history) for s in stats)
    assert all(s.residual <= 1e-12 for s in stats) and all(s.output is None for s in stats)
    assert float((ddim.sample(den, lat[-1], sch, 12) - x0).norm() / x0.norm()) < 1e-12


def test_predicted_start_is_the_step_solved_with_the_extrapolated_output():
    x_p = torch.randn(2, 8, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    o1, o2 = torch.randn(2, 2, 8, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    a, b = 0.9, -0.2
    assert solver.predicted_start(x_p, [], a, b) is None
    assert solver.predicted_start(x_p, [o1], 0.0, b) is None  # the step ignores its input
    assert torch.allclose(solver.predicted_start(x_p, [o1], a, b), (x_p - b * o1) / a)
    x = solver.predicted_start(x_p, [o2, o1], a, b)  # cleanest first: o1 is the latest
    assert torch.allclose(a * x + b * (2 * o1 - o2), x_p)


def test_a_given_start_keeps_the_residual_report():
    """From a given start, `residual` is still the largest |G(x) - x| / |G(x)| of the returned
    iterates' predecessors and the result G of an evaluated iterate: with no refinement allowed
    that is G(start) and the start's residual, after one call."""
    sch = ddim.schedule_from_config(COG)
    den = toy_denoiser(scale=0.4)
    t, p = ddim.grid(sch, 50)[10]
    a, b = ddim.coefficients(sch, t, p)
    x_p = torch.randn(4, 32, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    start = x_p + 0.01 * torch.randn(4, 32, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    counted, calls = counting(den)
    x, st = solver.invert_step(x_p, counted, t, a, b, iters=0, start=start)
    g_start = (x_p - b * den(start, t)) / a
    assert len(calls) == 1 and st.calls == 1 and st.history == []
    assert torch.equal(x, g_start) and torch.equal(st.output, den(start, t))
    assert st.residual == pytest.approx(float(solver._rel_rows(g_start - start, g_start).max()), rel=1e-12)
    x, st = solver.invert_step(x_p, den, t, a, b, iters=30, tol=1e-12, start=start)
    assert st.residual <= 1e-12 and st.calls == 1 + len(st.history)
    assert float(((a * x + b * den(x, t)) - x_p).norm() / x_p.norm()) < 1e-11


def test_fixed_refinements_still_cost_one_plus_iters_calls_per_step():
    """Without a tolerance every step makes 1 + iters calls, predicted start or not; iters 0 is
    the naive inverse (no prediction: G(x_p))."""
    sch = ddim.schedule_from_config(COG)
    x0 = torch.randn(2, 32, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    for iters in (0, 3):
        counted, calls = counting(toy_denoiser(scale=0.5))
        _, stats = ddim.invert(counted, x0, sch, 10, iters=iters, tol=0.0)
        assert len(calls) == 10 * (1 + iters) and [s.calls for s in stats] == [1 + iters] * 10
    naive, _ = ddim.invert(toy_denoiser(scale=0.5), x0, sch, 10, iters=0)
    by_hand = [x0]
    for t, p in reversed(ddim.grid(sch, 10)):  # x_t = (x_p - b out(x_p, t)) / a, the model at the cleaner latent
        a, b = ddim.coefficients(sch, t, p)
        by_hand.append((by_hand[-1] - b * toy_denoiser(scale=0.5)(by_hand[-1], t)) / a)
    assert all(torch.allclose(m, h, rtol=0, atol=1e-12) for m, h in zip(naive, by_hand))


def test_predicted_starts_save_calls_on_a_smooth_toy_model():
    """On the toy model (outputs smooth in x and t), the tolerance is reached with fewer calls than
    from the naive inverse, and the round trip is as exact."""
    sch = ddim.schedule_from_config(COG)
    den = toy_denoiser(scale=0.5)
    x0 = torch.randn(3, 32, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    lat, stats = ddim.invert(den, x0, sch, 30, iters=10, tol=1e-10, damping=1.0)
    naive_start = []
    for k, (t, p) in enumerate(reversed(ddim.grid(sch, 30))):
        a, b = ddim.coefficients(sch, t, p)
        _, st = solver.invert_step(lat[k], den, t, a, b, iters=10, tol=1e-10)
        naive_start.append(st.calls)
    assert sum(s.calls for s in stats) < sum(naive_start) - 20, ([s.calls for s in stats], naive_start)
    assert float((ddim.sample(den, lat[-1], sch, 30) - x0).norm() / x0.norm()) < 1e-9
