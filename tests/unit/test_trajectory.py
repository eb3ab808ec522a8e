"""The TRAJECTORY value: safetensors round trip, refusal of bad files, model and grid checks."""
import json

import pytest
import torch
from safetensors.torch import save_file

from vidinv import ddim, edm, errors, trajectory
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


# ----------------------------------------------------------------------------- old files, SVD grids

V1_KEYS = ("timesteps", "scheduler_config", "model_fingerprint", "model_name", "prompt", "negative_prompt",
           "guidance", "dynamic_cfg", "iterations", "tolerance", "residuals", "calls", "extra")


def write_v1(t, path):
    """A file exactly as version 1 of the pack wrote it: no family, no sigmas, version 1."""
    tensors = {"latents": t.latents, "embeds": t.embeds, "negative_embeds": t.negative_embeds}
    if t.null_embeds is not None:
        tensors["null_embeds"] = t.null_embeds
    meta = {k: getattr(t, k) for k in V1_KEYS}
    meta.update(format=trajectory.FORMAT, version=1)
    save_file(tensors, str(path), metadata={"vidinv": json.dumps(meta)})
    return path


def test_version_1_files_still_load_as_cogvideox(tmp_path):
    t = make(null=True)
    old = trajectory.load(write_v1(t, tmp_path / "v1.safetensors"))
    assert old.family == "cogvideox" and old.sigmas is None and old.conditioning == {}
    assert torch.equal(old.latents, t.latents) and torch.equal(old.null_embeds, t.null_embeds)
    assert old.timesteps == t.timesteps and old.summary() == t.summary()
    old.check_grid(ddim.schedule_from_config(CFG))
    old.check_grid(CFG)  # the model's scheduler config, as the nodes have it
    old.check_model(FakeModel())


def test_cogvideox_files_are_still_written_as_version_1(tmp_path):
    from safetensors import safe_open
    with safe_open(str(make().save(tmp_path / "t.safetensors")), framework="pt") as f:
        meta = json.loads(f.metadata()["vidinv"])
    assert meta["version"] == 1 and meta["family"] == "cogvideox" and "sigmas" not in meta
    assert set(V1_KEYS) <= set(meta)


def svd_config():
    from tests.tiny_svd import SCHEDULER
    return dict(SCHEDULER)


def make_svd(steps=4):
    from vidinv import edm
    grid = edm.grid_from_config(svd_config(), steps)
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(1, 1, 16, generator=g)
    return Trajectory(latents=torch.randn(steps + 1, 1, 3, 4, 4, 4, generator=g), timesteps=list(grid.timesteps),
                      scheduler_config=svd_config(), model_fingerprint="svd1", model_name="tiny-svd", prompt="",
                      negative_prompt="", embeds=emb, negative_embeds=emb * 0, guidance=3.0, dynamic_cfg=False,
                      iterations=10, tolerance=1e-5, residuals=[1e-6] * steps, calls=[4] * steps,
                      image_latents=torch.randn(1, 4, 4, 4, generator=g), family="svd", sigmas=list(grid.sigmas),
                      conditioning={"added_time_ids": [[6.0, 127.0, 0.02]], "fps": 7, "motion_bucket_id": 127,
                                    "noise_aug_strength": 0.02, "seed": 0, "min_guidance": 1.0, "max_guidance": 3.0})


def test_svd_trajectory_round_trip(tmp_path):
    from safetensors import safe_open
    t = make_svd()
    path = t.save(tmp_path / "svd.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["vidinv"])["version"] == 2
    t2 = trajectory.load(path)
    assert t2.family == "svd" and t2.sigmas == t.sigmas and t2.timesteps == t.timesteps
    assert t2.conditioning == t.conditioning and torch.equal(t2.image_latents, t.image_latents)
    assert torch.equal(t2.latents, t.latents) and torch.equal(t2.embeds, t.embeds)
    s = t2.summary()
    assert s == t.summary() and s["family"] == "svd" and s["sigma_max"] == pytest.approx(700.0)
    assert s["sigma_min"] == pytest.approx(0.002) and (s["min_guidance"], s["max_guidance"]) == (1.0, 3.0)
    assert t.sigmas[-1] == 0.0 and len(t.sigmas) == t.steps + 1


def test_svd_grid_check_says_what_differs():
    from vidinv import edm
    t = make_svd()
    t.check_grid(svd_config())
    t.check_grid(edm.grid_from_config(svd_config(), 4))
    with pytest.raises(errors.InputError, match=r"sigma 700 \.\. 0\.002.*sigma 80 \.\. 0\.002.*sigma at step 0 .*"
                                                r"changed settings: sigma_max 700\.0 -> 80\.0"):
        t.check_grid(dict(svd_config(), sigma_max=80.0))
    with pytest.raises(errors.InputError, match="model time at step 0.*timestep_type 'continuous' -> 'discrete'"):
        t.check_grid(dict(svd_config(), timestep_type="discrete"))
    with pytest.raises(errors.InputError, match="'v_prediction' outputs, the model's scheduler says 'epsilon'"):
        t.check_grid(dict(svd_config(), prediction_type="epsilon"))
    with pytest.raises(errors.InputError, match="trajectory has 4 steps, the grid given has 5"):
        t.check_grid(edm.grid_from_config(svd_config(), 5))


def test_families_refuse_each_other():
    svd_t, cog_t = make_svd(), make()
    with pytest.raises(errors.InputError, match="Stable Video Diffusion trajectory.*given to a CogVideoX"):
        svd_t.check_grid(ddim.schedule_from_config(CFG))
    with pytest.raises(errors.InputError, match="Stable Video Diffusion trajectory.*given to a CogVideoX"):
        svd_t.check_model(FakeModel("svd1"))
    with pytest.raises(errors.InputError, match="CogVideoX trajectory.*given to a Stable Video Diffusion"):
        cog_t.check_grid(edm.grid_from_config(svd_config(), svd_t.steps))
    model = FakeModel("abc")
    model.family = "svd"
    with pytest.raises(errors.InputError, match="CogVideoX trajectory.*given to a Stable Video Diffusion"):
        cog_t.check_model(model)


def test_inconsistent_svd_files(tmp_path):
    t = make_svd()
    t.sigmas = t.sigmas[:-1]
    with pytest.raises(errors.InputError, match="needs 5 sigmas"):
        trajectory.load(t.save(tmp_path / "a.safetensors"))
    t = make_svd()
    t.conditioning = {k: v for k, v in t.conditioning.items() if k != "fps"}
    with pytest.raises(errors.InputError, match="missing: fps"):
        trajectory.load(t.save(tmp_path / "b.safetensors"))
    t = make_svd()
    t.family = "sdxl"
    with pytest.raises(errors.InputError, match="family 'sdxl'"):
        trajectory.load(t.save(tmp_path / "c.safetensors"))
    p = tmp_path / "future.safetensors"
    save_file({"latents": torch.zeros(1)}, str(p),
              metadata={"vidinv": json.dumps({"format": trajectory.FORMAT, "version": 7})})
    with pytest.raises(errors.InputError, match="version 7.*up to version 6"):  # 3: tuned, 4: Wan, 5: edit-friendly, 6: native
        trajectory.load(p)


def test_steps_above_the_tolerance_are_recorded_saved_and_explained(tmp_path):
    """Issue 22: an inversion that stops short of its tolerance says which steps, by how much and
    what to change; the record survives save/load; files without it (older packs) derive it."""
    import dataclasses
    t = dataclasses.replace(make(steps=5), residuals=[3.9e-4, 2e-5, 1e-6, 1e-6, 2e-3],
                            calls=[201, 40, 3, 3, 1], above_tolerance=None)
    assert t.above_tolerance == [0, 1, 4]
    s = t.summary()
    assert [a["step"] for a in s["above_tolerance"]] == [1, 2, 5] and s["above_tolerance"][0]["calls"] == 201
    w = s["warning"]
    assert w.startswith("3 of 5 inversion steps ended above the tolerance 1e-05: step 1 (to timestep "
                        f"{t.timesteps[-1]}) at 0.00039 = 39x after 201 calls; step 2")
    assert "'iterations'" in w and "more steps" in w and "'plain'" in w
    loaded = trajectory.load(t.save(tmp_path / "t.safetensors"))
    assert loaded.above_tolerance == [0, 1, 4] and json.dumps(loaded.summary()) == json.dumps(s)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "t.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["vidinv"])
    assert meta["above_tolerance"] == [0, 1, 4] and meta["version"] == 1  # an optional key: v1 readers ignore it
    old = trajectory.load(write_v1(t, tmp_path / "v1.safetensors"))
    assert old.above_tolerance == [0, 1, 4] and old.summary()["warning"] == w
    assert make().summary()["warning"] == "" and make().above_tolerance == []
    fixed = dataclasses.replace(t, tolerance=0.0, above_tolerance=None)  # no tolerance: fixed iterations asked
    assert fixed.above_tolerance == [] and fixed.summary()["warning"] == ""


def test_svd_warning_names_sigmas_and_no_solver_choice():
    import dataclasses
    t = dataclasses.replace(make_svd(steps=4), residuals=[1e-6, 1e-6, 1e-6, 0.18], calls=[2, 2, 2, 200],
                            above_tolerance=None)
    w = t.tolerance_warning()
    assert t.above_tolerance == [3] and f"step 4 (to sigma {t.sigmas[0]:.4g}) at 0.18 = 18000x" in w
    assert "solver" not in w


@pytest.mark.parametrize("bad", [[7], ["0"], [True], "0", {"0": 1}])
def test_malformed_above_tolerance_is_refused(tmp_path, bad):
    t = make()
    t.above_tolerance = bad
    with pytest.raises(errors.InputError, match="'above_tolerance'"):
        trajectory.load(t.save(tmp_path / "t.safetensors"))
