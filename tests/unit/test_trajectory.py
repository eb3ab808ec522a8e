"""The TRAJECTORY value: safetensors round trip, refusal of bad files, model and grid checks."""
import json

import pytest
import torch
from safetensors.torch import save_file

from vidinv import ddim, errors, trajectory
from vidinv.trajectory import Trajectory

CFG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
           rescale_betas_zero_snr=True, snr_shift_scale=3.0, timestep_spacing="trailing", set_alpha_to_one=True,
           prediction_type="v_prediction", clip_sample=False)


def make(steps=5, dtype=torch.float32, null=False):
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(steps + 1, 1, 2, 4, 6, 6, generator=g).to(dtype)
    emb = torch.randn(1, 7, 12, generator=g)
    return Trajectory(latents=lat, timesteps=ddim.timesteps(ddim.schedule_from_config(CFG), steps),
                      scheduler_config=CFG, model_fingerprint="abc", model_name="tiny", prompt="a red circle",
                      negative_prompt="", embeds=emb, negative_embeds=emb * 0, guidance=1.0, dynamic_cfg=False,
                      iterations=10, tolerance=1e-5, residuals=[1e-6] * steps, calls=[3] * steps,
                      null_embeds=torch.randn(steps, 1, 7, 12, generator=g) if null else None,
                      extra={"pad_frames": 0})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_save_load_round_trip_is_bit_identical(tmp_path, dtype):
    t = make(dtype=dtype, null=True)
    t2 = trajectory.load(t.save(tmp_path / "t.safetensors"))
    assert torch.equal(t2.latents, t.latents) and t2.latents.dtype == dtype
    assert torch.equal(t2.embeds, t.embeds) and torch.equal(t2.null_embeds, t.null_embeds)
    assert t2.timesteps == t.timesteps and t2.scheduler_config == CFG and t2.extra == {"pad_frames": 0}
    assert t2.summary() == t.summary()


def test_size_reported_in_mb():
    t = make()
    expected = (t.latents.numel() * 4 + 2 * t.embeds.numel() * 4) / 1e6
    assert abs(t.size_mb - expected) < 1e-9 and t.summary()["size_mb"] == round(expected, 3)


def test_latent_for_step_indexing():
    t = make(steps=4)
    assert torch.equal(t.latent_for_step(0), t.latents[4]) and torch.equal(t.noise, t.latents[-1])
    assert torch.equal(t.latent_for_step(3), t.latents[1]) and torch.equal(t.clean, t.latents[0])


def test_missing_file(tmp_path):
    with pytest.raises(errors.InputError, match="does not exist"):
        trajectory.load(tmp_path / "nope.safetensors")


def test_corrupt_file(tmp_path):
    p = tmp_path / "bad.safetensors"
    good = make().save(tmp_path / "good.safetensors").read_bytes()
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(errors.InputError, match="could not be read as a safetensors file"):
        trajectory.load(p)
    p.write_bytes(b"not a safetensors file at all")
    with pytest.raises(errors.InputError, match="could not be read"):
        trajectory.load(p)


def test_foreign_file(tmp_path):
    p = tmp_path / "lora.safetensors"
    save_file({"w": torch.zeros(2)}, str(p), metadata={"format": "pt"})
    with pytest.raises(errors.InputError, match="not a trajectory"):
        trajectory.load(p)
    save_file({"w": torch.zeros(2)}, str(p), metadata={"vidinv": json.dumps({"format": "other"})})
    with pytest.raises(errors.InputError, match="format 'other'"):
        trajectory.load(p)


def test_inconsistent_file(tmp_path):
    t = make()
    t.latents = t.latents[:-1]
    with pytest.raises(errors.InputError, match="need one more latent than timesteps"):
        trajectory.load(t.save(tmp_path / "t.safetensors"))


class FakeModel:
    def __init__(self, fingerprint="abc", channels=4, name="tiny"):
        self.fingerprint, self.latent_channels, self.name = fingerprint, channels, name


def test_model_and_grid_checks():
    t = make()
    t.check_model(FakeModel())
    with pytest.raises(errors.InputError, match="made with model 'tiny'.*chosen model is 'other'"):
        t.check_model(FakeModel("zzz", name="other"))
    t.check_grid(ddim.schedule_from_config(CFG))
    with pytest.raises(errors.InputError, match="grid"):
        t.check_grid(ddim.schedule_from_config(dict(CFG, timestep_spacing="leading")))
