"""The pack in a real ComfyUI over HTTP: registration, the encode/decode workflow, errors."""
import json

import numpy as np
import pytest
from PIL import Image

from tests.host.helpers import ROOT, api_prompt, outputs_of
from tools import comfy_host
from tools.make_sample_video import write_mp4
from vidinv import synthetic

pytestmark = pytest.mark.host


def pack_mappings():
    from tests.conftest import load_pack
    return load_pack().NODE_CLASS_MAPPINGS


def test_every_node_registered_with_tooltips(object_info):
    for key in pack_mappings():
        assert key in object_info, key
        info = object_info[key]
        assert info["category"].startswith("video inversion/")
        assert info["python_module"] == f"custom_nodes.{comfy_host.PACK_DIR_NAME}"
        assert info["output"] == list(pack_mappings()[key].RETURN_TYPES)
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{key}.{name} has no tooltip"
    loader = object_info["VInvLoadCogVideoX"]["input"]["required"]["model"]
    options = loader[0] if isinstance(loader[0], list) else loader[1]["options"]
    assert "tiny-cogvideox (bundled)" in options


def test_pack_loaded_without_import_errors(comfy):
    lines = [line for line in comfy.tail(1000).splitlines() if comfy_host.PACK_DIR_NAME in line]
    assert lines, "the pack is missing from ComfyUI's custom-node import list"
    assert not any("IMPORT FAILED" in line for line in lines), lines


def read_frames(comfy, images: list[dict]) -> np.ndarray:
    root = comfy.base / "output"
    return np.stack([np.asarray(Image.open(root / im["subfolder"] / im["filename"]).convert("RGB"), np.float32) / 255
                     for im in images])


def test_encode_decode_workflow_saves_video(comfy):
    prompt = api_prompt("encode_decode.json")
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    videos = outputs_of(entry, "SaveVideo", prompt)[0]["images"]
    path = comfy.base / "output" / videos[0]["subfolder"] / videos[0]["filename"]
    assert path.is_file() and path.suffix == ".mp4" and path.stat().st_size > 0
    frames = read_frames(comfy, outputs_of(entry, "SaveImage", prompt)[0]["images"])
    assert frames.shape == (9, 64, 64, 3)
    assert synthetic.describe(frames) == {"shape": "circle", "colour": "red", "direction": "right"}


def test_vae_round_trip_through_the_host_matches_the_fixture(comfy):
    """The held-out set through LoadVideo -> VAE encode -> decode -> lossless PNGs reaches the
    PSNR the fixture's model card reports (within 0.5 dB)."""
    quality = json.loads((ROOT / "assets" / "tiny-cogvideox" / "quality.json").read_text())["vae"]
    specs = synthetic.heldout_specs(quality["videos"])
    psnrs = []
    for i, spec in enumerate(specs):
        name = f"heldout_{i:03d}.mp4"
        frames = synthetic.render(spec)
        write_mp4(comfy.base / "input" / name, frames)
        prompt = api_prompt("encode_decode.json", {("LoadVideo", "file"): name})
        entry = comfy.run(prompt)
        assert entry["status"]["status_str"] == "success", entry["status"]
        psnrs.append(synthetic.psnr(read_frames(comfy, outputs_of(entry, "SaveImage", prompt)[0]["images"]), frames))
    assert abs(np.mean(psnrs) - quality["psnr_db"]) <= 0.5, (np.mean(psnrs), quality["psnr_db"])


def execution_error(comfy, prompt):
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "error"
    err = comfy_host.execution_error(entry)
    assert err is not None
    return err


def test_unknown_model_is_refused_before_running(comfy):
    prompt = api_prompt("encode_decode.json", {("VInvLoadCogVideoX", "model"): "CogVideoX-nope"})
    status, body = comfy.queue(prompt)
    assert status == 400
    details = json.dumps(body["node_errors"])
    assert "CogVideoX-nope" in details and "not in" in details


def test_too_few_frames_is_a_readable_node_error(comfy):
    write_mp4(comfy.base / "input" / "three_frames.mp4", synthetic.render(synthetic.random_spec(5))[:3])
    prompt = api_prompt("encode_decode.json", {("LoadVideo", "file"): "three_frames.mp4"})
    err = execution_error(comfy, prompt)
    assert err["node_type"] == "VInvVAEEncode"
    assert err["exception_message"].startswith("the video has 3 frame(s); this model needs at least 5")
    assert "Traceback" not in err["exception_message"]


def test_size_the_model_cannot_take_is_a_readable_node_error(comfy):
    prompt = api_prompt("encode_decode.json", {("VInvVAEEncode", "width"): 40})
    err = execution_error(comfy, prompt)
    assert err["node_type"] == "VInvVAEEncode"
    assert "size 40x64 is not a positive multiple of 16" in err["exception_message"]
