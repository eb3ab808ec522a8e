"""Prompt-tuning inversion (issue 21) on a tiny random CogVideoX: it shares null-text inversion's loop
(`nulltext.optimise_steps`; test_nulltext.py keeps null-text's results), learns one conditional
embedding per step, and editing interpolates between it and the target prompt (`positive_for`)."""
import dataclasses
import json
import types

import pytest
import torch

from tests.conftest import load_pack
from tests.unit import test_nulltext
from vidinv import errors, nulltext, pipeline, trajectory
from vidinv.family import Guidance
from vidinv.models import cogvideox

setup = test_nulltext.setup  # the tiny model, its conditioning, x0 and its guidance-1 trajectory
STEPS, rel = test_nulltext.STEPS, test_nulltext.rel


@pytest.fixture(scope="module")
def tuned(setup):
    model, _, _, traj = setup
    return nulltext.prompt_tuning_inversion(model, traj, 6.0, iters=30, lr=0.05, tol=0, checkpoint=True)


def test_eta_0_reconstructs_at_the_guidance_it_was_learned_at(setup, tuned):
    model, cond, x0, traj = setup
    assert tuned.tuned_embeds.shape == (STEPS, 1, *traj.embeds.shape[1:])
    assert tuned.null_embeds is None and torch.equal(tuned.latents, traj.latents)
    record = tuned.extra["prompt_tuning"]
    assert (record["guidance"], record["iters"], record["lr"], record["tol"]) == (6.0, 30, 0.05, 0)
    assert len(record["losses"]) == STEPS
    back = pipeline.sample(model, cond, traj.noise, STEPS, guidance=Guidance(6.0),
                           positive=nulltext.positive_for(tuned, cond, 0.0))
    plain = pipeline.sample(model, cond, traj.noise, STEPS, guidance=Guidance(6.0))
    # measured: 3.6e-3 (plain guidance-6 sampling of the guidance-1 trajectory: 8.9e-2)
    assert rel(back, x0) < 1e-2 and rel(back, x0) * 10 < rel(plain, x0), (rel(back, x0), rel(plain, x0))


def test_guidance_1_stops_at_once_and_is_exact(setup):
    model, cond, x0, traj = setup
    calls = []
    hooks = types.SimpleNamespace(before_call=lambda: calls.append(1), after_step=lambda *a: None)
    tuned = nulltext.prompt_tuning_inversion(model, traj, 1.0, hooks=hooks)  # tolerance 1e-5
    assert len(calls) == STEPS  # only the conditional branch, one call per step: the source prompt fits
    assert torch.equal(tuned.tuned_embeds[:, 0], traj.embeds.expand(STEPS, -1, -1))
    back = pipeline.sample(model, cond, traj.noise, STEPS, positive=nulltext.positive_for(tuned, cond, 0.0))
    assert rel(back, x0) < 1e-5  # measured 5.7e-7, as plain sampling


def test_eta_interpolates_between_the_tuned_and_the_target_embedding(setup, tuned):
    model, cond, _, _ = setup
    edit = cogvideox.encode_text(model, "a green circle moving right")
    assert nulltext.positive_for(tuned, edit, 1.0) is None  # the plain prompt
    t = tuned.timesteps[2]
    half = nulltext.positive_for(tuned, edit, 0.25)(t)
    assert torch.allclose(half, 0.75 * tuned.tuned_embeds[2] + 0.25 * edit.embeds)
    assert torch.equal(nulltext.positive_for(tuned, edit, 0.0)(t), tuned.tuned_embeds[2])


def test_bad_inputs_are_refused_before_any_model_call(setup, tuned, monkeypatch):
    model, cond, _, traj = setup

    def no_call(*a, **k):
        raise AssertionError("the model was called")
    monkeypatch.setattr(cogvideox, "transformer_call", no_call)
    with pytest.raises(errors.InputError, match="has none"):
        nulltext.positive_for(traj, cond, 0.5)
    with pytest.raises(errors.InputError, match="none is connected"):
        nulltext.positive_for(None, cond, 0.0)
    for eta in (-0.1, 1.5, float("nan"), "0.5"):
        with pytest.raises(errors.InputError, match="must be a number from 0 to 1"):
            nulltext.positive_for(tuned, cond, eta)
    short = dataclasses.replace(cond, embeds=cond.embeds[:, :-1])
    with pytest.raises(errors.InputError, match="do not fit"):
        nulltext.positive_for(tuned, short, 0.5)
    for g in (0.5, float("inf")):
        with pytest.raises(errors.InputError, match="finite number >= 1"):
            nulltext.prompt_tuning_inversion(model, traj, g)
    with pytest.raises(errors.InputError, match="iterations 0 is out of range"):
        nulltext.prompt_tuning_inversion(model, traj, 6.0, iters=0)
    svd = types.SimpleNamespace(family="svd", name="tiny-svd")
    with pytest.raises(errors.InputError, match="works on CogVideoX models only"):
        nulltext.prompt_tuning_inversion(svd, traj, 6.0)
    from vidinv.models import svd
    with pytest.raises(errors.InputError, match="takes no prompt-tuned embeddings"):
        svd.FAMILY.denoiser(None, None, Guidance(), None, positive=lambda t: cond.embeds)


def test_save_load_round_trip_and_format_version(setup, tuned, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file
    _, _, _, traj = setup
    path = tuned.save(tmp_path / "pt.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["vidinv"])
    assert meta["version"] == trajectory.TUNED_VERSION == 3  # packs before prompt tuning read up to 2: refused
    back = trajectory.load(path)
    assert torch.equal(back.tuned_embeds, tuned.tuned_embeds)
    assert back.extra["prompt_tuning"] == tuned.extra["prompt_tuning"]
    assert back.summary()["prompt_tuning"] and not traj.summary()["prompt_tuning"]
    assert tuned.size_mb > traj.size_mb
    with safe_open(str(traj.save(tmp_path / "plain.safetensors")), framework="pt") as f:
        assert json.loads(f.metadata()["vidinv"])["version"] == 1  # files without them do not change
    assert trajectory.load(tmp_path / "plain.safetensors").tuned_embeds is None
    future = tmp_path / "future.safetensors"
    save_file({"latents": torch.zeros(1)}, str(future),
              metadata={"vidinv": json.dumps({"format": trajectory.FORMAT, "version": trajectory.VERSION + 1})})
    with pytest.raises(errors.InputError, match=f"version {trajectory.VERSION + 1}.*up to version {trajectory.VERSION}"):
        trajectory.load(future)


def test_malformed_tuned_embeddings_are_refused(tuned):
    for bad in (tuned.tuned_embeds[1:], tuned.tuned_embeds[..., :-1], tuned.tuned_embeds[0]):
        with pytest.raises(errors.InputError, match="tuned_embeds must be"):
            trajectory.validate(dataclasses.replace(tuned, tuned_embeds=bad))


# ----------------------------------------------------------------------------- the nodes

def test_nodes(tiny_folders):
    pack = load_pack()
    lib, m = pack.vidinv, pack.NODE_CLASS_MAPPINGS
    model = lib.models.cogvideox.load(tiny_folders["5b"], "fp32")
    cond = lib.models.cogvideox.encode_text(model, "a red circle moving right", "")
    x0 = torch.randn(1, 2, model.latent_channels, 4, 4, generator=torch.Generator().manual_seed(1))
    traj = lib.pipeline.invert(model, cond, x0, 4, settings=lib.solver.Solver(iters=10, tol=0))
    noise = pack.nodes.pipeline_nodes.trajectory_noise(traj, model)
    with pytest.raises(lib.errors.InputError, match="tuned_eta 0.5 needs a trajectory with prompt-tuned"):
        m["VInvDDIMSample"]().sample(model, cond, noise, 4, 3.0, False, "conditioning", traj, 0.5)
    out = m["VInvPromptTuningInversion"]().optimise(model, traj, 3.0, 3, 0.05, 1e-5, "off")
    tuned, = out["result"]
    assert out["ui"]["vinv_trajectory"][0]["prompt_tuning"] and tuned.tuned_embeds.shape[0] == 4
    rec, = m["VInvDDIMSample"]().sample(model, cond, noise, 4, 3.0, False, "conditioning", tuned, 0.0)
    plain, = m["VInvDDIMSample"]().sample(model, cond, noise, 4, 3.0, False, "conditioning", tuned)
    assert rel(rec["samples"], x0) < rel(plain["samples"], x0)
    patched, = m["VInvReferenceAttention"]().patch(model, tuned, "all", 0.0, 1.0, 4.0, False, "all", "source")
    guided = m["VInvGuidedSample"]().sample(patched, cond, 3.0, False, "inverted", 0, "conditioning", None, 0.0)
    assert guided["result"][0]["samples"].shape == x0.shape
    spec = m["VInvPromptTuningInversion"].INPUT_TYPES()["required"]
    assert spec["guidance"][1]["min"] == 1.0 and spec["guidance"][1]["default"] == 6.0
