"""A Stable Video Diffusion graph in the real host: a tiny random SVD folder under
models/diffusers is listed by Load SVD Model, and load -> VAE encode -> encode first frame ->
Euler invert -> Euler sample / reference attention + guided sample reconstructs the source; an SVD
model on a CogVideoX-only node is a readable node error."""
import json

import pytest

from tests.tiny_svd import write_tiny_svd
from tests.host.helpers import node, saved_latent, svd_round_trip
from tools import comfy_host

pytestmark = pytest.mark.host
IMAGE = "vinv_red_circle_right_first_frame_green.png"  # copied into input/ by the pack


@pytest.fixture(scope="module")
def svd_folder(comfy):
    folder = write_tiny_svd(comfy.base / "models" / "diffusers" / "tiny-svd-host")
    cfg = json.loads((folder / "vae" / "config.json").read_text())  # ~unit-variance latents (see test_svd_nodes)
    (folder / "vae" / "config.json").write_text(json.dumps({**cfg, "scaling_factor": 3.0}))
    return folder


def graph(model: str) -> dict:
    return {
        **svd_round_trip(model, IMAGE, 8, 8, 30, 1e-7),
        "8": node("VInvReferenceAttention", model=["1", 0], trajectory=["6", 0], blocks="all", start=0.0, end=1.0,
                  weight=2.0, reference_text=False, rows="all", reference_conditioning="source"),
        "9": node("VInvSVDGuidedSample", model=["8", 0], min_guidance=1.0, max_guidance=1.0, start="inverted", seed=0,
                  conditioning=["5", 0]),
        "10": node("VInvVAEDecode", model=["1", 0], latent=["9", 0], tiling="auto"),
        "11": node("PreviewImage", images=["10", 0]),
        "12": node("SaveLatent", samples=["4", 0], filename_prefix="svd/source"),
        "13": node("SaveLatent", samples=["7", 0], filename_prefix="svd/rec"),
        "14": node("SaveLatent", samples=["9", 0], filename_prefix="svd/guided"),
    }



def test_svd_graph_reconstructs_in_the_host(comfy, svd_folder):
    options = comfy.get("/object_info/VInvLoadSVD")["VInvLoadSVD"]["input"]["required"]["model"][0]
    assert "tiny-svd-host" in options and "tiny-cogvideox (bundled)" not in options
    prompt = graph("tiny-svd-host")
    entry = comfy.run(prompt, timeout=300)
    assert entry["status"]["status_str"] == "success", comfy_host.execution_error(entry)
    src = saved_latent(comfy, entry, "12")
    assert src.shape == (1, 3, 4, 4, 4)
    for nid in ("13", "14"):
        assert float((saved_latent(comfy, entry, nid) - src).norm() / src.norm()) < 1e-3, nid
    summary = entry["outputs"]["6"]["vinv_trajectory"][0]
    assert summary["family"] == "svd" and summary["steps"] == 8


def test_svd_model_on_ddim_invert_is_a_readable_node_error(comfy, svd_folder):
    prompt = {k: v for k, v in graph("tiny-svd-host").items() if k in ("1", "2", "3", "4", "5")}
    prompt["6"] = {"class_type": "VInvDDIMInvert", "_meta": {"title": "DDIM"}, "inputs": {
        "model": ["1", 0], "conditioning": ["5", 0], "latent": ["4", 0], "steps": 4, "guidance": 1.0,
        "dynamic_cfg": False, "iterations": 1, "tolerance": 1e-5, "solver": "anderson", "damping": 0.0,
        "trajectory_dtype": "fp32"}}
    prompt["7"] = {"class_type": "SaveLatent", "_meta": {"title": "Save"},
                   "inputs": {"samples": ["6", 1], "filename_prefix": "svd/never"}}
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "error"
    err = comfy_host.execution_error(entry)
    assert err["node_type"] == "VInvDDIMInvert"
    assert err["exception_message"].startswith("DDIM Invert works on CogVideoX models only")
    assert "Euler Invert (SVD, exact)" in err["exception_message"]
