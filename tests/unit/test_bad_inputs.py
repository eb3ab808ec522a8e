"""Hostile and broken input (issue 17), without ComfyUI: the blocks parser, model-folder
scanning, the trajectory file schema, paths kept inside ComfyUI's folders, the numeric guard
on every node, step counts, frames. Property-based tests (hypothesis) throw generated text and
generated malformed files at the parser and the loader: only InputError, in bounded time."""
import json
import math
import shutil
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from tests.conftest import load_pack
from tests.unit.test_trajectory import FakeModel, make, make_svd
from vidinv import attention, errors, trajectory, video
from vidinv.models import cogvideox, svd


# ----------------------------------------------------------------------------- blocks text

@pytest.mark.parametrize("text, layers, expected", [
    ("all", 4, (0, 1, 2, 3)), ("", 4, (0, 1, 2, 3)), ("*", 2, (0, 1)), ("3", 4, (3,)), (" 1 - 2 ", 4, (1, 2)),
    ("0,2,2,1-2", 4, (0, 1, 2)), ("2-", 4, (2, 3)), ("-4", 4, (0, 1, 2, 3)), ("3-3", 4, (3,)),
])
def test_blocks_accepted(text, layers, expected):
    assert attention.parse_blocks(text, layers) == expected


@pytest.mark.parametrize("text, fragment", [
    ("0-99999999999", "names 99999999999 in '0-99999999999', outside 0..7"),
    ("0-200000", "names 200000 in '0-200000', outside 0..7"),
    ("8", "names 8 in '8', outside 0..7"),
    ("5-2", "the range '5-2', which runs backwards (write 2-5)"),
    ("-0", "the first 0 blocks, which is none"),
    ("-", "a '-' with no numbers"),
    ("-9", "outside 0..8"),
    ("1,,2", "an empty entry between commas"),
    ("first", "is not a list of block indices or ranges"),
    ("1-2-3", "'1-2-3' is neither"),
    ("\u0663", "is not a list of block indices"),  # a non-ASCII digit
    ("1.5", "is not a list of block indices"),
    ("0," * 600, "characters long (at most 1000)"),
])
def test_blocks_refused_with_short_texts(text, fragment):
    with pytest.raises(errors.InputError) as err:
        attention.parse_blocks(text, 8)
    assert fragment in str(err.value)
    assert len(str(err.value)) < 300 and "This model has 8 blocks" in str(err.value)


def test_blocks_huge_range_is_refused_at_once():
    start = time.perf_counter()
    for text in ("0-99999999999", "0-" + "9" * 5000, "0-7," * 300):
        with pytest.raises(errors.InputError):
            attention.parse_blocks(text, 8)
    assert time.perf_counter() - start < 0.5


def test_svd_blocks_are_bounded_by_its_spatial_blocks(tmp_path):
    from tests.tiny_svd import write_tiny_svd
    from vidinv.models import svd_attention
    unet = svd.load(write_tiny_svd(tmp_path / "tiny-svd")).unet
    spatial = len(svd_attention.self_attention_layers(unet, "all"))
    with pytest.raises(errors.InputError, match=f"outside 0..{spatial - 1}.*has {spatial} blocks"):
        svd_attention.self_attention_layers(unet, "0-99999999999")


@settings(max_examples=300, deadline=200, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(st.text(max_size=60),
                      st.text(alphabet="0123456789-, ", max_size=40),
                      st.lists(st.integers(-10**12, 10**12).map(str), max_size=6).map("-".join)),
       layers=st.integers(1, 64))
def test_blocks_property_only_input_errors(text, layers):
    try:
        got = attention.parse_blocks(text, layers)
    except errors.InputError as err:
        assert len(str(err)) < 400
    else:
        assert got and list(got) == sorted(set(got)) and all(0 <= i < layers for i in got)


@settings(max_examples=200, deadline=100)
@given(start=st.floats(allow_nan=True, allow_infinity=True), end=st.floats(allow_nan=True, allow_infinity=True),
       weight=st.floats(allow_nan=True, allow_infinity=True), steps=st.integers(1, 1000))
def test_window_property(start, end, weight, steps):
    try:
        attention.check_window_weight_rows(start, end, weight, "all")
    except errors.InputError:
        return
    assert 0 <= start <= end <= 1 and math.isfinite(weight) and weight >= 0
    active = attention.window_steps(start, end, steps)
    assert all(start <= i / steps < end for i in active) and list(active) == sorted(active)


# ----------------------------------------------------------------------------- model folders

@pytest.mark.parametrize("content", ["[1, 2, 3]", "null", '"text"', "{broken", "42"])
def test_malformed_model_folder_is_skipped_and_logged_once(tiny_folders, tmp_path, caplog, content):
    root = tmp_path / "CogVideo"
    shutil.copytree(tiny_folders["2b"], root / "good")
    shutil.copytree(tiny_folders["2b"], root / "broken")
    for sub in ("transformer", "unet"):
        (root / "broken" / sub).mkdir(exist_ok=True)
        (root / "broken" / sub / "config.json").write_text(content)
    cogvideox.skip_folder.cache_clear()

    def skipped():
        return [r.getMessage() for r in caplog.records if "skipped model folder" in r.getMessage()]
    with caplog.at_level("WARNING", logger="vidinv"):
        for _ in range(3):
            assert list(cogvideox.find_model_folders([root])) == ["good"]
        assert len(skipped()) == 1 and "broken" in skipped()[0] and "config.json" in skipped()[0]
        assert svd.find_model_folders([root]) == {}
    with pytest.raises(errors.InputError, match="transformer/config.json cannot be read"):
        cogvideox.load(root / "broken")


def test_unreadable_root_is_skipped(tmp_path):
    (tmp_path / "file-not-folder").write_text("x")
    assert cogvideox.find_model_folders([tmp_path / "file-not-folder", tmp_path / "missing"]) == {}


# ----------------------------------------------------------------------------- trajectory schema

def rewrite(path, meta=None, tensors=None, drop=(), **changes):
    """Save `tensors` with the metadata `meta` changed by `changes` and `drop`."""
    meta = dict(meta)
    meta.update(changes)
    for key in drop:
        meta.pop(key, None)
    save_file(tensors, str(path), metadata={"vidinv": json.dumps(meta)})
    return path


def parts(t, tmp_path):
    from safetensors import safe_open
    with safe_open(str(t.save(tmp_path / "good.safetensors")), framework="pt") as f:
        return json.loads(f.metadata()["vidinv"]), {k: f.get_tensor(k) for k in f.keys()}


META_ROWS = [  # (change to the metadata, expected fragment)
    ({"timesteps": "0,1"}, "field 'timesteps' must be a list of finite numbers, got a string"),
    ({"timesteps": [999, "x", 3]}, "field 'timesteps' must be a list of finite numbers"),
    ({"scheduler_config": [1]}, "field 'scheduler_config' must be a JSON object, got a list"),
    ({"model_fingerprint": 5}, "field 'model_fingerprint' must be a string, got a number"),
    ({"guidance": "abc"}, "field 'guidance' must be a finite number >= 0, got a string"),
    ({"guidance": float("nan")}, "field 'guidance' must be a finite number >= 0, got a number (nan)"),
    ({"dynamic_cfg": 1}, "field 'dynamic_cfg' must be true or false"),
    ({"iterations": "10"}, "field 'iterations' must be a whole number >= 0, got a string"),
    ({"iterations": 2.5}, "field 'iterations' must be a whole number >= 0"),
    ({"tolerance": None}, "field 'tolerance' must be a finite number >= 0, got null"),
    ({"residuals": [float("nan")] * 5}, "field 'residuals' must be a list of finite numbers >= 0"),
    ({"calls": [1, 2, -1, 3, 3]}, "field 'calls' must be a list of whole numbers >= 0"),
    ({"residuals": [0.0] * 3}, "3 residuals for 5 steps"),
    ({"extra": []}, "field 'extra' must be a JSON object, got a list"),
    ({"extra": {"pad_frames": 10**9}}, "extra.pad_frames must be a whole number from 0 to 1"),
    ({"extra": {"pad_frames": "2"}}, "extra.pad_frames must be a whole number"),
    ({"family": 3}, "field 'family' must be a string"),
    ({"version": "1"}, "version '1', this pack reads"),
    ({"timesteps": [999.5, 799, 599, 399, 199]}, "timesteps must be whole numbers"),
]


@pytest.mark.parametrize("change, fragment", META_ROWS)
def test_metadata_field_refused_by_name(tmp_path, change, fragment):
    meta, tensors = parts(make(), tmp_path)
    with pytest.raises(errors.InputError, match="^'?bad.safetensors'?:? ") as err:
        trajectory.load(rewrite(tmp_path / "bad.safetensors", meta, tensors, **change))
    assert fragment in str(err.value)


@pytest.mark.parametrize("key", list(trajectory.FIELDS))
def test_missing_metadata_field_refused_by_name(tmp_path, key):
    meta, tensors = parts(make(), tmp_path)
    with pytest.raises(errors.InputError, match=f"lacks the field '{key}'"):
        trajectory.load(rewrite(tmp_path / "bad.safetensors", meta, tensors, drop=(key,)))


@pytest.mark.parametrize("raw, fragment", [("[1, 2]", "metadata is a list, not a JSON object"),
                                           ('"text"', "metadata is a string"), ("null", "metadata is null")])
def test_metadata_not_an_object(tmp_path, raw, fragment):
    path = tmp_path / "bad.safetensors"
    save_file({"latents": torch.zeros(1)}, str(path), metadata={"vidinv": raw})
    with pytest.raises(errors.InputError, match=fragment):
        trajectory.load(path)


TENSOR_ROWS = [  # (tensor name, replacement given the good tensors, fragment)
    ("latents", lambda t: t["latents"].to(torch.int32), "tensor 'latents' is int32"),
    ("latents", lambda t: t["latents"].clone().fill_(float("nan")), "tensor 'latents' holds NaN or infinite"),
    ("latents", lambda t: torch.cat([t["latents"][:1] * float("inf"), t["latents"][1:]]), "holds NaN or infinite"),
    ("embeds", lambda t: t["embeds"][0], "embeds must be [1 or B=1, L, D], got (7, 12)"),
    ("embeds", lambda t: torch.zeros(1, 0, 12), "tensor 'embeds' is empty"),
    ("negative_embeds", lambda t: t["negative_embeds"][:, :3], "negative_embeds (1, 3, 12) must have the shape"),
    ("null_embeds", lambda t: t["null_embeds"][:, :, :, :5], "null_embeds must be [T, 1, L, D] = [5, 1, 7, 12]"),
    ("image_latents", lambda t: torch.zeros(1, 2, 4, 3, 3), "image_latents must be [B, F, C, H, W] = (1, 2, 4, 6, 6)"),
]


@pytest.mark.parametrize("name, replace, fragment", TENSOR_ROWS)
def test_tensor_refused_by_name(tmp_path, name, replace, fragment):
    meta, tensors = parts(make(null=True), tmp_path)
    tensors[name] = replace(tensors).contiguous()
    with pytest.raises(errors.InputError) as err:
        trajectory.load(rewrite(tmp_path / "bad.safetensors", meta, tensors))
    assert fragment in str(err.value)


SVD_ROWS = [
    ({"conditioning": {"added_time_ids": "x"}}, "missing: fps"),
    ({"conditioning": {"added_time_ids": [[6.0, 127.0]], "fps": 7, "motion_bucket_id": 127, "noise_aug_strength": 0.02,
                       "seed": 0, "min_guidance": 1.0, "max_guidance": 3.0}},
     "conditioning.added_time_ids must be 1 row(s) of 3 numbers"),
    ({"conditioning": {"added_time_ids": [[6.0, 127.0, 0.02]], "fps": "7", "motion_bucket_id": 127,
                       "noise_aug_strength": 0.02, "seed": 0, "min_guidance": 1.0, "max_guidance": 3.0}},
     "conditioning.fps must be a whole number >= 0, got a string"),
    ({"sigmas": [700.0, "a", 0.0]}, "field 'sigmas' must be a list of finite numbers"),
]


@pytest.mark.parametrize("change, fragment", SVD_ROWS)
def test_svd_fields_refused_by_name(tmp_path, change, fragment):
    meta, tensors = parts(make_svd(), tmp_path)
    with pytest.raises(errors.InputError) as err:
        trajectory.load(rewrite(tmp_path / "bad.safetensors", meta, tensors, **change))
    assert fragment in str(err.value)


def test_svd_image_latents_shape(tmp_path):
    meta, tensors = parts(make_svd(), tmp_path)
    tensors["image_latents"] = torch.zeros(1, 4, 2, 2)
    with pytest.raises(errors.InputError, match=r"image_latents must be \[B, C, h, w\] = \(1, 4, 4, 4\)"):
        trajectory.load(rewrite(tmp_path / "bad.safetensors", meta, tensors))


class ShapedModel(FakeModel):
    """What a CogVideoX model value tells about its conditioning and patches."""
    max_text_length, text_dim, is_i2v, patch_size, patch_size_t = 7, 12, False, 2, None


def test_trajectory_checked_against_the_models_shapes():
    t = make()
    t.check_model(ShapedModel())
    for attr, value, fragment in (("max_text_length", 9, "embeds (1, 7, 12) has 7 tokens, the model's conditioning "
                                                         "has 9"),
                                  ("text_dim", 16, "has 12 channels, the model's conditioning has 16"),
                                  ("is_i2v", True, "carries no image latents but the model is image-to-video"),
                                  ("patch_size", 4, "latent size 6x6 is not a multiple of the model's patch size 4"),
                                  ("patch_size_t", 4, "the model patches 4 frame(s) at a time")):
        model = ShapedModel()
        setattr(model, attr, value)
        with pytest.raises(errors.InputError, match="invert the video again") as err:
            t.check_model(model)
        assert fragment in str(err.value), attr
    t.extra["pad_frames"] = 1
    with pytest.raises(errors.InputError, match="pad_frames 1; the model patches 1 frame"):
        t.check_model(ShapedModel())


def test_svd_trajectory_checked_against_the_image_embedding_width():
    model = FakeModel("svd1", name="tiny-svd")
    model.family, model.embed_dim = "svd", 32
    with pytest.raises(errors.InputError, match="embeds .* has 16 channels, the model's conditioning has 32"):
        make_svd().check_model(model)


def test_nan_is_never_written_to_a_trajectory(tmp_path):
    for change, fragment in ((("guidance", float("nan")), "field 'guidance' must be a finite number"),
                             (("tolerance", float("inf")), "field 'tolerance' must be a finite number"),
                             (("residuals", [float("nan")] * 5), "field 'residuals'")):
        t = make()
        setattr(t, *change)
        with pytest.raises(errors.InputError, match="the trajectory was not saved: ") as err:
            t.save(tmp_path / "sub" / "x.safetensors")
        assert fragment in str(err.value)
    t = make()
    t.latents[2, 0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(errors.InputError, match="not saved: .*tensor 'latents' holds NaN"):
        t.save(tmp_path / "sub" / "x.safetensors")
    assert not (tmp_path / "sub").exists()


MALFORMED_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)


@settings(max_examples=120, deadline=1000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_loader_property_only_input_errors(tmp_path, data):
    """A good file with generated damage: fields replaced, dropped or added, tensors swapped for
    generated shapes and dtypes, or the metadata replaced by any JSON value."""
    base = make_svd() if data.draw(st.booleans()) else make(null=data.draw(st.booleans()))
    meta, tensors = parts(base, tmp_path)
    for key in data.draw(st.lists(st.sampled_from(sorted(meta) + ["pad"]), max_size=3)):
        action = data.draw(st.sampled_from(["replace", "drop"]))
        if key == "pad":
            meta["extra"] = {"pad_frames": data.draw(MALFORMED_VALUES)}
        elif action == "drop":
            meta.pop(key, None)
        else:
            meta[key] = data.draw(MALFORMED_VALUES)
    for key in data.draw(st.lists(st.sampled_from(sorted(tensors) + ["image_latents"]), max_size=2)):
        shape = data.draw(st.lists(st.integers(0, 4), min_size=0, max_size=6))
        dtype = data.draw(st.sampled_from([torch.float32, torch.float16, torch.int32, torch.uint8, torch.float64]))
        tensors[key] = torch.full(shape, data.draw(st.sampled_from([0.0, 1.0, float("nan")]))).to(dtype)
    raw = json.dumps(data.draw(MALFORMED_VALUES)) if data.draw(st.integers(0, 9)) == 0 else json.dumps(meta)
    path = tmp_path / "gen.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"vidinv": raw})
    start = time.perf_counter()
    try:
        traj = trajectory.load(path)
        traj.summary()
        traj.check_model(ShapedModel(base.model_fingerprint) if traj.family == "cogvideox" else FakeModel())
    except errors.InputError as err:
        assert len(str(err)) < 1000
    assert time.perf_counter() - start < 0.5


# ----------------------------------------------------------------------------- frames

def test_frames_alpha_dropped_and_empty_or_zero_size_refused():
    rgba = torch.rand(5, 8, 8, 4)
    assert torch.equal(video.check_images(rgba), rgba[..., :3])
    for bad, fragment in ((torch.rand(0, 8, 8, 3), "the image batch is empty"),
                          (torch.rand(2, 0, 8, 3), "the frames are 8x0 pixels"),
                          (torch.rand(2, 8, 0, 4), "the frames are 0x8 pixels"),
                          (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), "must be floating point"),
                          (torch.full((1, 2, 2, 3), float("nan")), "NaN or infinite pixel values")):
        with pytest.raises(errors.InputError, match=fragment):
            video.check_images(bad, "images")


def test_guidance_below_one_refused_by_the_library():
    for g in (0.0, 0.5, float("nan"), float("inf")):
        with pytest.raises(errors.InputError, match="must be a finite number >= 1"):
            cogvideox.check_guidance(g)
    with pytest.raises(errors.InputError, match="must be finite and >= 1"):
        svd.check_guidance(0.5, 3.0)


# ----------------------------------------------------------------------------- nodes

@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture()
def folders(pack, tmp_path):
    host = pack.nodes.host
    saved = dict(host._FALLBACK_DIRS)
    host._FALLBACK_DIRS.update(input=tmp_path / "input", output=tmp_path / "output", models=tmp_path / "models")
    for kind in ("input", "output"):
        (tmp_path / kind).mkdir()
    try:
        yield tmp_path
    finally:
        host._FALLBACK_DIRS.clear()
        host._FALLBACK_DIRS.update(saved)


def test_every_numeric_input_of_every_node_refuses_non_finite_values(pack):
    """The one guard: NaN, infinity, text and booleans in any INT/FLOAT input are refused before
    the node's function runs (here with no other argument given)."""
    ierr = pack.vidinv.errors.InputError
    checked = 0
    for key, cls in pack.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, (kind, *_) in spec.get(section, {}).items():
                if kind not in ("INT", "FLOAT"):
                    continue
                for bad in ((float("nan"), float("inf"), "3", True) if kind == "FLOAT" else (2.5, "3", False)):
                    with pytest.raises(ierr, match=f"{name} is .*not a finite"):
                        getattr(cls(), cls.FUNCTION)(**{name: bad})
                    checked += 1
    assert checked > 60


@pytest.mark.parametrize("node, name, value, fragment", [
    ("VInvDDIMInvert", "guidance", 0.5, "guidance 0.5 is outside 1.0..30.0"),
    ("VInvDDIMInvert", "guidance", 0.0, "would weaken the conditioning"),
    ("VInvDDIMSample", "guidance", 0.99, "outside 1.0..30.0"),
    ("VInvGuidedSample", "guidance", 31.0, "outside 1.0..30.0"),
    ("VInvSVDInvert", "min_guidance", 0.5, "outside 1.0..30.0"),
    ("VInvDDIMInvert", "steps", 0, "steps 0 is outside 1..1000"),
    ("VInvDDIMInvert", "iterations", 10**9, "outside 0..100"),
    ("VInvReferenceAttention", "weight", -1.5, "outside -1.0..20.0"),
    ("VInvDDIMInvert", "tolerance", -1e-3, "outside 0.0..1.0"),
])
def test_numbers_outside_the_nodes_range_refused(pack, node, name, value, fragment):
    cls = pack.NODE_CLASS_MAPPINGS[node]
    with pytest.raises(pack.vidinv.errors.InputError, match="Set .* to a number from") as err:
        getattr(cls(), cls.FUNCTION)(**{name: value})
    assert fragment in str(err.value)


def test_load_trajectory_paths_stay_inside_the_folders(pack, folders, tmp_path):
    host, ierr = pack.nodes.host, pack.vidinv.errors.InputError
    outside = make().save(tmp_path / "elsewhere" / "t.safetensors")
    inside = make().save(folders / "input" / "good.safetensors")
    (folders / "input" / "link.safetensors").symlink_to(outside)
    (folders / "input" / "dirlink").symlink_to(outside.parent, target_is_directory=True)
    (folders / "input" / "locked.safetensors").write_bytes(inside.read_bytes())
    (folders / "input" / "locked.safetensors").chmod(0)
    assert host.annotated_path("good.safetensors") == inside.resolve()
    messages = set()
    for name in (str(outside), "/etc/passwd", "../elsewhere/t.safetensors", f"../../../../{outside} [output]",
                 "link.safetensors", "dirlink/t.safetensors", "missing.safetensors", "good.safe\0tensors", "",
                 "x" * 5000, "locked.safetensors" if not host.os.access(folders / "input" / "locked.safetensors",
                                                                        host.os.R_OK) else "missing2", 42):
        with pytest.raises(ierr) as err:
            host.annotated_path(name)
        messages.add(str(err.value).split("'", 2)[-1])  # the message without the name
    assert messages == {" is not a readable file in ComfyUI's input folder. Pick a file from the list: files in "
                        "ComfyUI's input folder (saved ones are marked '[output]'); paths and links that lead outside "
                        "the folder are refused.",
                        " is not a readable file in ComfyUI's output folder. Pick a file from the list: files in "
                        "ComfyUI's output folder (saved ones are marked '[output]'); paths and links that lead "
                        "outside the folder are refused."}
    listed = pack.nodes.trajectory_nodes.trajectory_files()
    assert "good.safetensors" in listed and "link.safetensors" not in listed
    assert not any(n.startswith("dirlink") for n in listed)
    node = pack.NODE_CLASS_MAPPINGS["VInvLoadTrajectory"]
    assert node.IS_CHANGED(file="/etc/passwd") == "/etc/passwd"  # nothing outside is read, not even to hash it


@pytest.mark.parametrize("prefix, fragment", [
    ("/etc/x", "'/etc/x' is an absolute path"),
    ("C:\\x", "is an absolute path"),
    ("../../x", "points outside the output folder"),
    ("a/\0b", "contains a NUL byte"),
    ("p" * 300, "is 300 characters long (at most 200)"),
    ("é" * 196, "is 392 bytes long in UTF-8 (at most 200)"),
    ("a\nb", "contains a control character"),
    ("tab\there", "contains a control character"),
    ("esc\x1b[0m", "contains a control character"),
])
def test_save_trajectory_prefix_refused(pack, folders, prefix, fragment):
    save = pack.NODE_CLASS_MAPPINGS["VInvSaveTrajectory"]()
    with pytest.raises(pack.vidinv.errors.InputError) as err:
        save.save(make(), prefix)
    assert fragment in str(err.value) and len(str(err.value)) < 300
    assert not any(p.is_file() for p in (folders / "output").rglob("*"))


def test_save_trajectory_prefix_blocked_by_a_file(pack, folders):
    (folders / "output" / "taken").write_text("x")
    with pytest.raises(pack.vidinv.errors.InputError, match="the folder 'taken' cannot be made"):
        pack.NODE_CLASS_MAPPINGS["VInvSaveTrajectory"]().save(make(), "taken/t")


@pytest.fixture(scope="module")
def tiny_graph(pack, tiny_folders, tmp_path_factory):
    """A 2-step CogVideoX inversion, an I2V model, and a 2-step SVD inversion, through the nodes."""
    from tests.tiny_svd import write_tiny_svd
    m, cog, svd_mod = pack.NODE_CLASS_MAPPINGS, pack.vidinv.models.cogvideox, pack.vidinv.models.svd
    out = {"model": cog.load(tiny_folders["2b"], "fp32"), "i2v": cog.load(tiny_folders["5b-i2v"], "fp32")}
    out["cond"], = m["VInvEncodeText"]().encode(out["model"], "a red circle", "")["result"]
    frames = torch.rand(5, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    out["latent"], _ = m["VInvVAEEncode"]().encode(out["model"], frames, "trim to 4k+1", "resize and crop", 16, 16,
                                                   "auto")["result"]
    out["traj"], out["noise"] = m["VInvDDIMInvert"]().invert(out["model"], out["cond"], out["latent"], 2, 1.0, False,
                                                             1, 0.0, "anderson", 0.0, "fp32")["result"]
    out["svd"] = svd_mod.load(write_tiny_svd(tmp_path_factory.mktemp("svd") / "tiny-svd"), "fp32")
    out["svd_frames"] = torch.rand(3, 8, 8, 3, generator=torch.Generator().manual_seed(1))
    out["svd_latent"], _ = m["VInvVAEEncode"]().encode(out["svd"], out["svd_frames"], "trim to 4k+1",
                                                       "resize and crop", 8, 8, "auto")["result"]
    out["svd_cond"], = m["VInvSVDEncodeFirstFrame"]().encode(out["svd"], out["svd_frames"], 7, 127, 0.02, 0)
    out["svd_traj"], out["svd_noise"] = m["VInvSVDInvert"]().invert(out["svd"], out["svd_cond"], out["svd_latent"], 2,
                                                                    1.0, 1.0, 1, 0.0, "fp32")["result"]
    return out


def test_samplers_refuse_another_step_count_than_the_trajectorys(pack, tiny_graph):
    m, g, ierr = pack.NODE_CLASS_MAPPINGS, tiny_graph, pack.vidinv.errors.InputError
    sample = m["VInvDDIMSample"]().sample
    with pytest.raises(ierr, match="DDIM Sample: steps is 3, but the connected trajectory has 2 steps. Set steps to 2"):
        sample(g["model"], g["cond"], g["latent"], 3, 1.0, False, "conditioning", trajectory=g["traj"])
    with pytest.raises(ierr, match="steps is 1, but the latent is the noise of a trajectory with 2 steps"):
        sample(g["model"], g["cond"], g["noise"], 1, 1.0, False, "conditioning")
    sample(g["model"], g["cond"], g["noise"], 2, 1.0, False, "conditioning", trajectory=g["traj"])
    sample(g["model"], g["cond"], g["latent"], 3, 1.0, False, "conditioning")  # a plain latent: any count
    with pytest.raises(ierr, match="Euler Sample \\(SVD\\): steps is 4, but the latent is the noise of a trajectory "
                                   "with 2 steps"):
        m["VInvSVDSample"]().sample(g["svd"], g["svd_cond"], g["svd_noise"], 4, 1.0, 1.0)


def test_loaded_trajectory_noise_keeps_its_step_count(pack, tiny_graph, folders):
    m = pack.NODE_CLASS_MAPPINGS
    saved = m["VInvSaveTrajectory"]().save(tiny_graph["traj"], "t")["ui"]["vinv_saved"][0]
    _, noise = m["VInvLoadTrajectory"]().load(tiny_graph["model"], f"{saved['filename']} [output]")["result"]
    assert noise["vinv"]["trajectory_steps"] == 2


def test_rgba_frames_at_native_size_encode_as_rgb(pack, tiny_graph):
    m, g = pack.NODE_CLASS_MAPPINGS, tiny_graph
    rgb = torch.rand(5, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    rgba = torch.cat([rgb, torch.rand(5, 16, 16, 1)], dim=-1)
    enc = m["VInvVAEEncode"]().encode
    a, _ = enc(g["model"], rgba, "trim to 4k+1", "resize and crop", 16, 16, "auto")["result"]
    assert torch.equal(a["samples"], g["latent"]["samples"])
    svd_rgba = torch.cat([g["svd_frames"], torch.ones(3, 8, 8, 1)], dim=-1)
    b, _ = enc(g["svd"], svd_rgba, "trim to 4k+1", "resize and crop", 8, 8, "auto")["result"]
    assert torch.equal(b["samples"], g["svd_latent"]["samples"])
    cond, = m["VInvSVDEncodeFirstFrame"]().encode(g["svd"], svd_rgba, 7, 127, 0.02, 0)
    assert torch.equal(cond.image_latents, g["svd_cond"].image_latents)


def test_empty_batches_are_refused_by_name(pack, tiny_graph):
    m, g, ierr = pack.NODE_CLASS_MAPPINGS, tiny_graph, pack.vidinv.errors.InputError
    empty = torch.zeros(0, 8, 8, 3)
    with pytest.raises(ierr, match="images: the image batch is empty"):
        m["VInvVAEEncode"]().encode(g["svd"], empty, "trim to 4k+1", "resize and crop", 8, 8, "auto")
    with pytest.raises(ierr, match="image: the image batch is empty"):
        m["VInvSVDEncodeFirstFrame"]().encode(g["svd"], empty, 7, 127, 0.02, 0)
    with pytest.raises(ierr, match="images: the frames are 0x16 pixels"):
        m["VInvVAEEncode"]().encode(g["model"], torch.zeros(5, 16, 0, 3), "trim to 4k+1", "resize and crop", 0, 0,
                                    "auto")
    i2v = g["i2v"]
    cond, = m["VInvEncodeText"]().encode(i2v, "a red circle", "")["result"]
    latent, _ = m["VInvVAEEncode"]().encode(i2v, torch.rand(5, 48, 48, 3), "trim to 4k+1", "resize and crop", 0, 0,
                                            "auto")["result"]
    traj, _ = m["VInvDDIMInvert"]().invert(i2v, cond, latent, 2, 1.0, False, 0, 0.0, "plain", 0.0, "fp32")["result"]
    patched, = m["VInvReferenceAttention"]().patch(i2v, traj, "all", 0.0, 1.0, 1.0, False, "all", "source")
    with pytest.raises(ierr, match="first_frame: the image batch is empty"):
        m["VInvGuidedSample"]().sample(patched, cond, 1.0, False, "inverted", 0, "conditioning", first_frame=empty)


def test_reference_guide_refused_where_it_cannot_be_made(pack, tiny_graph):
    """Reference Attention's guide: an unknown one, and 'one-call' on a trajectory whose inversion would drop what
    it carries (an edit-friendly one's noise maps), are refused before any model call, and the input model stays
    unpatched; 'auto' takes the trajectory there, and on models nothing was measured on (image-to-video, SVD). The
    one-call guide is made by the first Guided Sample that follows it (one call per step: 2 here), not by a sample
    without the difference mask, and kept for the next."""
    m, g, ierr = pack.NODE_CLASS_MAPPINGS, tiny_graph, pack.vidinv.errors.InputError
    patch = m["VInvReferenceAttention"]().patch
    ef, _ = m["VInvFriendlyInvert"]().invert(g["model"], g["cond"], g["latent"], 2, 1.0, 0, "fp32")["result"]
    calls = []
    hook = g["model"].transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ierr, match="guide 'two-call' is not one of auto, trajectory, one-call"):
            patch(g["model"], g["traj"], "all", 0.0, 0.4, -1.0, False, "all", "source", guide="two-call")
        with pytest.raises(ierr, match="this trajectory is edit-friendly .* Set guide to 'trajectory'"):
            patch(g["model"], ef, "all", 0.0, 0.4, -1.0, False, "all", "source", guide="one-call")
        auto, = patch(g["model"], ef, "all", 0.0, 0.4, -1.0, False, "all", "source")
        assert calls == [] and auto.reference.guide is None and auto.reference.options.weight == 8.0
        made, = patch(g["model"], g["traj"], "all", 0.0, 0.4, -1.0, False, "all", "source")
        assert calls == [] and made.reference.guide.made is None  # made by the first sample that follows it
        sample = m["VInvGuidedSample"]().sample
        sample(made, g["cond"], 1.0, False, "inverted", 0, "conditioning", mask_threshold=0.0)  # no mask: no guide
        plain = len(calls)
        assert made.reference.guide.made is None
        sample(made, g["cond"], 1.0, False, "inverted", 0, "conditioning")  # the difference mask: it follows the guide
        guide = made.reference.guide.made
        assert guide.iterations == 0 and guide.kind == "exact"
        first = len(calls) - plain
        sample(made, g["cond"], 1.0, False, "inverted", 0, "conditioning")
        assert made.reference.guide.made is guide and len(calls) - plain - first == first - 2  # kept: 2 calls fewer
        half, _ = m["VInvDDIMInvert"]().invert(g["model"], g["cond"], g["latent"], 2, 1.0, False, 1, 0.0, "anderson",
                                               0.0, "fp16")["result"]
        assert patch(g["model"], half, "all", 0.0, 0.4, -1.0, False, "all", "source")[0].reference.guide.get().latents \
            .dtype == torch.float16  # stored as the trajectory it was made from
    finally:
        hook.remove()
    assert g["model"].reference is None
    recipe = pack.vidinv.families.of(g["i2v"]).edit_recipe(g["i2v"])
    assert (recipe.guide, recipe.weight) == ("trajectory", 2.0)
    svd, = patch(g["svd"], g["svd_traj"], "all", 0.0, 0.4, -1.0, False, "all", "source")
    assert svd.reference.guide is None and svd.reference.options.weight == 2.0


def test_reference_attention_blocks_text_refused_on_the_node(pack, tiny_graph):
    m, g, ierr = pack.NODE_CLASS_MAPPINGS, tiny_graph, pack.vidinv.errors.InputError
    layers = int(g["model"].transformer.config.num_layers)
    for blocks in ("0-99999999999", "0-200000", "5-2", "-0", "-"):
        with pytest.raises(ierr, match=f"^blocks '{blocks}' .*This model has {layers} blocks") as err:
            m["VInvReferenceAttention"]().patch(g["model"], g["traj"], blocks, 0.0, 1.0, 1.0, False, "all", "source")
        assert len(str(err.value)) < 300
    spatial = len(pack.vidinv.models.svd_attention.self_attention_layers(g["svd"].unet, "all"))
    with pytest.raises(ierr, match=f"outside 0..{spatial - 1}. This model has {spatial} blocks"):  # SVD's spatial blocks
        m["VInvReferenceAttention"]().patch(g["svd"], g["svd_traj"], "0-99999999999", 0.0, 1.0, 1.0, False, "all",
                                            "source")


def test_a_latent_of_another_model_is_refused_even_when_shapes_match(pack):
    """Issue 38: the bundled CogVideoX's and Wan's latents are both [1, 3, 16, 8, 8]; DDIM Sample took Wan
    noise, CogVideoX's VAE Decode a Wan latent, Flow Invert a CogVideoX latent. A pack latent names its model."""
    from types import SimpleNamespace
    common = pack.nodes.common
    cog = SimpleNamespace(fingerprint="c" * 16, name="tiny-cogvideox (bundled)")
    wan = SimpleNamespace(fingerprint="w" * 16, name="tiny-wan (bundled)")
    latent = common.latent_value(torch.zeros(1, 3, 16, 8, 8), wan)
    assert common.latent_parts(latent, wan, "VAE Decode Video")[0].shape == (1, 3, 16, 8, 8)
    with pytest.raises(pack.vidinv.errors.InputError, match=r"VAE Decode Video: this latent was made by the model "
                                                            r"'tiny-wan \(bundled\)', not by 'tiny-cogvideox"):
        common.latent_parts(latent, cog, "VAE Decode Video")
    plain = {"samples": torch.zeros(1, 3, 16, 8, 8)}  # a latent from outside the pack names no model
    assert common.latent_parts(plain, cog, "DDIM Sample")[2] == 0
