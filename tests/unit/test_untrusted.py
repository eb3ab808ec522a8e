"""Issue 38: sizes, model folders and trajectory files are untrusted input. Every case answers with
the pack's own message before anything heavy is built or allocated (configs against the weights'
safetensors headers, memory estimates against the budget, a trajectory's declared kind)."""
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.unit.test_trajectory import make
from vidinv import budget, errors, trajectory, video
from vidinv.models import cogvideox, configcheck, loading, svd, wan

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets"


def light_copy(src: Path, dst: Path) -> Path:
    """The folder with its configs copied (to be edited) and its weights linked (never written)."""
    for f in src.rglob("*"):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif f.suffix == ".safetensors":
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(f, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
    return dst


def edit(folder: Path, rel: str, **changes):
    cfg = json.loads((folder / rel).read_text())
    cfg.update(changes)
    (folder / rel).write_text(json.dumps(cfg))


T, V, S, I = "transformer/config.json", "vae/config.json", "scheduler/scheduler_config.json", "text_encoder/config.json"
WAN_CASES = [  # (file, what to write: a dict of changes or the raw text, message fragment)
    (T, {"num_layers": 1_000_000_000}, "num_layers is a number (1000000000), expected a whole number from 1 to 1024"),
    (T, {"num_layers": 1e9}, "num_layers is a number"),
    (T, {"text_dim": 1_000_000_000}, "text_dim is"),
    (T, {"rope_max_seq_len": 10_000_000_000}, "rope_max_seq_len is"),
    (S, {"num_train_timesteps": 1_000_000_000_000}, "num_train_timesteps is"),
    (T, {"patch_size": [1, 0, 0]}, "patch_size is"),
    (T, {"num_attention_heads": -4}, "num_attention_heads is"),
    (V, {"z_dim": "sixteen"}, "z_dim is a string"),
    (V, {"scale_factor_spatial": 0}, "scale_factor_spatial is"),
    (V, {"latents_mean": [0.0, 0.1, 0.2]}, "latents_mean is"),
    (V, {"latents_std": [0.0] * 16}, "latents_std is"),
    (V, {"_class_name": None}, "_class_name is null (null), expected a class name"),  # diffusers' ValueError otherwise
    (S, {"_class_name": 7}, "_class_name is a number"),
    (T, {"num_layers": 9}, "num_layers 9, but the transformer weights hold 8"),
    (T, {"ffn_dim": 512}, "blocks.0.ffn.net.0.proj.weight of shape [512, 128]"),
    (T, {"text_dim": 32}, "text_dim 32 differs from the text encoder's d_model 64"),
    (I, {"num_layers": 7}, "num_layers 7, but the text_encoder weights hold"),
    (T, "[1, 2, 3]", "transformer/config.json is a list, not a JSON object"),
    (T, '"a string"', "is a string, not a JSON object"),
    (V, "{not json", "vae/config.json is not valid JSON"),
    ("model_index.json", "[]", "model_index.json is a list"),
]


@pytest.mark.parametrize("rel, change, fragment", WAN_CASES, ids=[f"{r}-{str(c)[:30]}" for r, c, _ in WAN_CASES])
def test_hostile_wan_folders_are_refused_in_milliseconds(tmp_path, rel, change, fragment):
    folder = light_copy(ASSETS / "tiny-wan", tmp_path / "hostile")
    if isinstance(change, dict):
        edit(folder, rel, **change)
    else:
        (folder / rel).write_text(change)
    start = time.perf_counter()
    with pytest.raises(errors.InputError) as err:
        wan.load(folder)
    assert time.perf_counter() - start < 1.0
    assert fragment in str(err.value), str(err.value)
    assert "'hostile'" in str(err.value)  # the folder is named


@pytest.mark.parametrize("family, name, rel, change, fragment", [
    (cogvideox, "tiny-cogvideox", T, {"num_layers": 1_000_000_000}, "num_layers is"),
    (cogvideox, "tiny-cogvideox", T, {"num_layers": 7}, "num_layers 7, but the transformer weights hold 8"),
    (cogvideox, "tiny-cogvideox", T, {"sample_height": 4000, "sample_width": 4000, "sample_frames": 4000,
                                      "use_rotary_positional_embeddings": False}, "position table of"),
    (cogvideox, "tiny-cogvideox", T, {"text_embed_dim": 32}, "text_embed_dim 32 differs from the text encoder's"),
    (cogvideox, "tiny-cogvideox", T, {"attention_head_dim": 40}, "attention_head_dim 40 cannot carry CogVideoX's 3-D RoPE"),
    (cogvideox, "tiny-cogvideox", T, {"time_embed_dim": 64}, "time_embedding.linear_1.weight of shape [64, 128]"),
    (cogvideox, "tiny-cogvideox", V, {"latent_channels": 8}, "decoder.conv_in.conv.weight"),
    (cogvideox, "tiny-cogvideox", S, {"snr_shift_scale": -1.0}, "snr_shift_scale is"),
    (svd, "tiny-svd", "unet/config.json", {"block_out_channels": [32, 64, 64, 64]}, "down_blocks"),
    (svd, "tiny-svd", "image_encoder/config.json", {"image_size": 1_000_000}, "image_size is"),
    (svd, "tiny-svd", "image_encoder/config.json", {"image_size": 448}, "position_embedding.weight"),
    (svd, "tiny-svd", "vae/config.json", {"scaling_factor": 0}, "scaling_factor is"),
])
def test_hostile_cogvideox_and_svd_folders_are_refused(tmp_path, family, name, rel, change, fragment):
    folder = light_copy(ASSETS / name, tmp_path / "hostile")
    edit(folder, rel, **change)
    with pytest.raises(errors.InputError, match="hostile") as err:
        family.load(folder)
    assert fragment in str(err.value), str(err.value)


def test_every_bundled_folder_passes_the_check():
    for family, name in ((cogvideox, "tiny-cogvideox"), (cogvideox, "tiny-cogvideox-i2v"), (svd, "tiny-svd"),
                         (wan, "tiny-wan")):
        family.check_model_folder(ASSETS / name)


def test_the_scan_lists_a_refused_folder_and_logs_why(tmp_path, caplog):
    good = light_copy(ASSETS / "tiny-wan", tmp_path / "root" / "good")
    bad = light_copy(ASSETS / "tiny-wan", tmp_path / "root" / "bad")
    edit(bad, T, num_layers=1_000_000_000)
    (tmp_path / "root" / "broken").mkdir()
    (tmp_path / "root" / "broken" / "transformer").mkdir()
    (tmp_path / "root" / "broken" / "transformer" / "config.json").write_text("[")
    loading.refused_folder.cache_clear()
    with caplog.at_level("WARNING", logger="vidinv"):
        found = wan.find_model_folders([tmp_path / "root"])
    assert found == {"bad": bad, "good": good}  # listed: choosing it shows the message
    assert "bad will be refused when loaded" in caplog.text and "num_layers" in caplog.text


def test_a_damaged_safetensors_header_is_named(tmp_path):
    folder = light_copy(ASSETS / "tiny-wan", tmp_path / "hostile")
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    weights.write_bytes((10**15).to_bytes(8, "little") + b"{}")
    with pytest.raises(errors.InputError, match="transformer/diffusion_pytorch_model.safetensors is not a readable"):
        wan.check_model_folder(folder)


def test_field_checks():
    fields = {"n": configcheck.count(1, 10), "xs": configcheck.Field("numbers", -1, 1, length="n"),
              "flag": configcheck.Field("bool"), "k": configcheck.count(1, 4, default=2)}
    assert configcheck.check_fields({"n": 2, "xs": [0.5, -1]}, fields, "f")["k"] == 2
    for bad, fragment in (({"n": True}, "n is a boolean"), ({"n": 11}, "from 1 to 10"), ({"n": 2.0}, "n is a number"),
                          ({"n": 2, "xs": [0.5]}, "a list of 2 finite numbers"), ({"xs": [2]}, "xs is"),
                          ({"flag": 1}, "true or false"), ({"n": None}, "n is null")):
        with pytest.raises(errors.InputError, match=fragment):
            configcheck.check_fields(bad, fields, "f")


# ----------------------------------------------------------------------------- memory

def test_a_resize_beyond_the_budget_is_refused_before_allocating(monkeypatch):
    monkeypatch.delenv(budget.ENV, raising=False)
    monkeypatch.setattr(budget, "free_memory", lambda device: 20 * 2**30)  # a 24 GB machine, 20 GiB free
    frames = torch.rand(9, 64, 64, 3)
    start = time.perf_counter()
    with pytest.raises(errors.InputError, match=r"resizing 9 frames of 64x64 to 8192x8192 needs about 20\.2 GiB, "
                                                r"more than the memory budget of 10\.0 GiB \(half the free memory\)"):
        video.fit_size(frames, 8192, 8192, 16)
    assert time.perf_counter() - start < 1.0
    out, _ = video.fit_size(frames, 128, 128, 16)  # a size that fits goes through
    assert out.shape == (9, 128, 128, 3)


def test_the_budget_can_be_set_and_a_bad_setting_is_named(monkeypatch):
    monkeypatch.setenv(budget.ENV, "0.001")
    with pytest.raises(errors.InputError, match=f"set {budget.ENV} to allow more"):
        video.fit_size(torch.rand(9, 64, 64, 3), 256, 256, 16)
    monkeypatch.setenv(budget.ENV, "lots")
    with pytest.raises(errors.InputError, match="is not a number of GiB > 0"):
        budget.limit()
    monkeypatch.setenv(budget.ENV, "64")
    assert budget.limit() == 64 * 2**30


def test_vae_work_and_trajectories_are_bounded(monkeypatch):
    monkeypatch.setenv(budget.ENV, "1")
    model = cogvideox.load(ASSETS / "tiny-cogvideox")
    with pytest.raises(errors.InputError, match="VAE-encoding 9 frames of 4096x4096 needs about"):
        loading.require_vae_memory(model, 9, 4096, 4096, False, "VAE-encoding")
    loading.require_vae_memory(model, 9, 64, 64, False, "VAE-encoding")
    with pytest.raises(errors.InputError, match="at 1000 steps of a 1x13x16x60x90 latent"):
        budget.require_trajectory(1000, torch.zeros(1, 13, 16, 60, 90))
    budget.require_trajectory(50, torch.zeros(1, 13, 16, 60, 90))


# ----------------------------------------------------------------------------- trajectory kinds

def rewrite(path: Path, drop=(), add=None, meta_changes=None, drop_meta=()) -> Path:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["vidinv"])
        tensors = {k: f.get_tensor(k) for k in f.keys() if k not in drop}
    tensors.update(add or {})
    meta.update(meta_changes or {})
    for k in drop_meta:
        meta.pop(k, None)
    out = path.with_name("edited.safetensors")
    save_file(tensors, str(out), metadata={"vidinv": json.dumps(meta)})
    return out


def friendly_file(tmp_path) -> Path:
    t = make()
    t.noise_maps = torch.randn(t.steps, *t.latents.shape[1:])
    t.iterations, t.tolerance, t.residuals, t.calls = 0, 0.0, [0.0] * t.steps, [1] * t.steps
    return t.save(tmp_path / "friendly.safetensors")


def test_files_declare_their_kind_and_load_as_it(tmp_path):
    exact = make().save(tmp_path / "exact.safetensors")
    assert trajectory.load(exact).kind == "exact"
    assert trajectory.load(friendly_file(tmp_path)).kind == "edit-friendly"
    with safe_open(str(friendly_file(tmp_path)), framework="pt") as f:
        meta = json.loads(f.metadata()["vidinv"])
    assert meta["kind"] == "edit-friendly" and meta["version"] == trajectory.FRIENDLY_VERSION


@pytest.mark.parametrize("case", ["maps removed", "maps removed, kind dropped", "maps removed, declared exact",
                                  "maps added to exact", "maps added, declared friendly"])
def test_a_file_cannot_change_kind(tmp_path, case):
    if case.startswith("maps removed"):
        meta = {"declared exact": {"kind": "exact"}}.get(case.split(", ")[-1], {})
        path = rewrite(friendly_file(tmp_path), drop=("noise_maps",), meta_changes=meta,
                       drop_meta=("kind",) if "dropped" in case else ())
    else:
        t = make()
        maps = {"noise_maps": torch.zeros(t.steps, *t.latents.shape[1:])}
        meta = {"kind": "edit-friendly"} if "declared" in case else {}
        path = rewrite(t.save(tmp_path / "exact.safetensors"), add=maps, meta_changes=meta)
    with pytest.raises(errors.InputError, match="declared|version") as err:
        trajectory.load(path)
    assert "save the trajectory again" in str(err.value)


def test_files_from_before_the_declaration_still_load(tmp_path):
    assert trajectory.load(rewrite(make().save(tmp_path / "e.safetensors"), drop_meta=("kind",))).kind == "exact"
    old = rewrite(friendly_file(tmp_path), drop_meta=("kind",))
    assert trajectory.load(old).kind == "edit-friendly"


def test_optimised_embeddings_only_where_they_exist_and_of_plausible_size(tmp_path):
    t = make(null=True)
    path = t.save(tmp_path / "null.safetensors")
    with pytest.raises(errors.InputError, match="a Wan trajectory carries no null_embeds"):
        trajectory.load(rewrite(path, meta_changes={"family": "wan", "version": 4}))
    with pytest.raises(errors.InputError, match=r"null_embeds have an RMS of .* over 100x"):
        trajectory.load(rewrite(path, add={"null_embeds": t.null_embeds * 1e6}))
    with pytest.raises(errors.InputError, match="latents reach"):
        trajectory.load(rewrite(path, add={"latents": t.latents * 1e6}))


# ----------------------------------------------------------------------------- generated input

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**13, 10**13) | st.floats(allow_nan=False)
                        | st.text(max_size=8), lambda inner: st.lists(inner, max_size=4), max_leaves=6)
WAN_KEYS = sorted(wan.TRANSFORMER_FIELDS) + ["_class_name"]


@pytest.fixture(scope="module")
def wan_copy(tmp_path_factory):
    return light_copy(ASSETS / "tiny-wan", tmp_path_factory.mktemp("generated") / "generated")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(WAN_KEYS + sorted(wan.VAE_FIELDS)), ANY_JSON, min_size=1, max_size=3),
       vae=st.booleans())
def test_generated_configs_get_the_packs_message_or_pass_in_milliseconds(wan_copy, changes, vae):
    rel = V if vae else T
    original = (ASSETS / "tiny-wan" / rel).read_text()
    edit(wan_copy, rel, **changes)
    try:
        start = time.perf_counter()
        try:
            wan.check_model_folder(wan_copy)
        except errors.InputError as err:
            assert "'generated'" in str(err)
            assert time.perf_counter() - start < 1.0
            return
        wan.load(wan_copy)  # what the check lets through loads (or is refused by the pack)
    finally:
        (wan_copy / rel).write_text(original)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 9), h=st.integers(1, 64), w=st.integers(1, 64), height=st.integers(1, 1 << 20),
       width=st.integers(1, 1 << 20))
def test_generated_sizes_are_fitted_or_refused_within_the_budget(n, h, w, height, width):
    os.environ[budget.ENV] = "0.05"  # 51 MiB
    try:
        out, _ = video.fit_size(torch.rand(n, h, w, 3), height * 16, width * 16, 16)
        assert out.shape == (n, height * 16, width * 16, 3)
        assert budget.resize_bytes(n, height * 16, width * 16, h, w) <= 0.05 * 2**30
    except errors.InputError as err:
        assert "needs about" in str(err)
    finally:
        del os.environ[budget.ENV]


def test_the_real_models_configs_pass():
    """CogVideoX-2B / 5B and Wan 2.1 1.3B / 14B transformer configs (tests/fullsize_models.py) are in range."""
    from tests import fullsize_models as fm

    def refuse(problem, fix=""):
        raise AssertionError(problem)

    for arch, _ in fm.ARCHS.values():
        cfg = configcheck.check_fields(json.loads(json.dumps({**fm.COMMON, **arch})), cogvideox.TRANSFORMER_FIELDS, "t")
        cogvideox._cross_checks({T: cfg}, refuse)
        configcheck.check_fields(dict(fm.SCHEDULER, snr_shift_scale=3.0), cogvideox.SCHEDULER_FIELDS, "s")
    for arch, _ in fm.WAN_ARCHS.values():
        cfg = configcheck.check_fields(json.loads(json.dumps({**fm.WAN_COMMON, **arch})), wan.TRANSFORMER_FIELDS, "t")
        wan._cross_checks({T: cfg}, refuse)
        assert wan._transformer_promises("transformer", cfg)[1].shape == (arch["num_attention_heads"] * 128, 16, 1, 2, 2)
