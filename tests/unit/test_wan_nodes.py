"""The Wan nodes without ComfyUI, on the tiny random Wan folder: a whole graph called by hand (load
-> encode text -> VAE encode -> Flow Invert -> Flow Sample, the shared Reference Attention + Guided
Sample, save/load trajectory), and the refusals across families."""
import dataclasses
import shutil

import pytest
import torch

from tests.conftest import load_pack
from tests.tiny_wan import write_tiny_wan

STEPS = 8
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture(scope="module")
def errors(pack):
    from vidinv_pack.vidinv import errors
    return errors


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def graph(pack, tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy-wan")
    host = pack.nodes.host
    saved = dict(host._FALLBACK_DIRS)
    host._FALLBACK_DIRS.update(models=root / "models", input=root / "input", output=root / "output")
    write_tiny_wan(root / "models" / "diffusers" / "tiny-wan")
    shutil.copytree(root / "models" / "diffusers" / "tiny-wan", root / "models" / "Wan" / "tiny-wan-copy")
    m = pack.NODE_CLASS_MAPPINGS
    out = {}
    try:
        out["options"] = m["VInvLoadWan"].INPUT_TYPES()["required"]["model"][0]
        out["model"], = m["VInvLoadWan"]().load("tiny-wan", "fp32", "none")
        frames = torch.rand(6, 18, 14, 3, generator=torch.Generator().manual_seed(0))
        res = m["VInvVAEEncode"]().encode(out["model"], frames, "trim to 4k+1", "resize and crop", 16, 16, "auto")
        out["latent"], out["frames"] = res["result"]
        out["cond"], = m["VInvWanEncodeText"]().encode(out["model"], "a red circle moving right", "")["result"]
        out["edit"], = m["VInvWanEncodeText"]().encode(out["model"], "a blue circle moving right", "")["result"]
        inv = m["VInvWanInvert"]().invert(out["model"], out["cond"], out["latent"], STEPS, 1.0, 30, 1e-7, "anderson",
                                          "fp32")
        out["traj"], out["noise"] = inv["result"]
        out["summary"] = inv["ui"]["vinv_trajectory"][0]
        out["rec"], = m["VInvWanSample"]().sample(out["model"], out["cond"], out["noise"], STEPS, 1.0, "conditioning")
        out["patched"], = m["VInvReferenceAttention"]().patch(out["model"], out["traj"], "all", 0.0, 1.0, 4.0, False,
                                                              "all", "source")
        g = m["VInvGuidedSample"]().sample(out["patched"], out["cond"], 1.0, False, "inverted", 0, "conditioning")
        out["guided"], out["mask_frames"] = g["result"]
        out["edited"], _ = m["VInvGuidedSample"]().sample(out["patched"], out["edit"], 3.0, False, "inverted", 0,
                                                           "source prompt")["result"]
        out["decoded"], = m["VInvVAEDecode"]().decode(out["model"], out["guided"], "auto")
        out["saved"] = m["VInvSaveTrajectory"]().save(out["traj"], "trajectories/wan")["ui"]["vinv_saved"][0]
        yield out
    finally:
        host._FALLBACK_DIRS.clear()
        host._FALLBACK_DIRS.update(saved)


def test_loader_lists_wan_folders(graph):
    # the bundled model first (when it is there), then models/Wan, then models/diffusers
    assert graph["options"][-2:] == ["tiny-wan-copy", "tiny-wan"] and graph["model"].family == "wan"


def test_graph_shapes_and_round_trip(graph):
    x0 = graph["latent"]["samples"]
    assert graph["frames"].shape == (5, 16, 16, 3)  # 4k+1 frames of the 2x-temporal VAE: 2k+1 -> 5 of 6
    assert x0.shape == (1, 3, 12, 8, 8)
    assert graph["summary"]["family"] == "wan" and graph["summary"]["steps"] == STEPS
    assert graph["summary"]["sigma_max"] == 1.0 and graph["summary"]["flow_shift"] == 5.0
    assert rel(graph["rec"]["samples"], x0) < 1e-4
    assert rel(graph["guided"]["samples"], graph["rec"]["samples"]) < 1e-4
    assert rel(graph["edited"]["samples"], x0) > 1e-3
    assert graph["decoded"].shape == (5, 16, 16, 3)
    assert graph["model"].reference is None and graph["patched"].reference is not None


def test_load_trajectory_round_trip(pack, graph):
    m = pack.NODE_CLASS_MAPPINGS
    saved = graph["saved"]
    name = f"{saved['subfolder']}/{saved['filename']} [output]"
    traj, noise = m["VInvLoadTrajectory"]().load(graph["model"], name)["result"]
    assert traj.family == "wan" and torch.equal(traj.latents, graph["traj"].latents)
    assert torch.equal(noise["samples"], graph["noise"]["samples"])


def test_other_families_nodes_refuse_a_wan_model_and_back(pack, graph, errors):
    m, model = pack.NODE_CLASS_MAPPINGS, graph["model"]
    with pytest.raises(errors.InputError, match="DDIM Invert works on CogVideoX models only.*Wan model") as err:
        m["VInvDDIMInvert"]().invert(model, graph["cond"], graph["latent"], 4, 1.0, False, 1, 1e-5, "anderson", 0.0,
                                     "fp32")
    assert "For Wan use Encode Text (Wan), Flow Invert (Wan, exact)" in str(err.value)  # the model's own nodes
    assert "SVD" not in str(err.value)
    with pytest.raises(errors.InputError, match="Encode Text works on CogVideoX models only.*For Wan use"):
        m["VInvEncodeText"]().encode(model, "a prompt", "")
    with pytest.raises(errors.InputError, match="Null-Text Inversion works on CogVideoX models only"):
        m["VInvNullTextInversion"]().optimise(model, graph["traj"], 6.0, 1, 0.05, 1e-5, "auto")
    with pytest.raises(errors.InputError, match="Euler Invert \\(SVD\\) works on Stable Video Diffusion models only"):
        m["VInvSVDInvert"]().invert(model, graph["cond"], graph["latent"], 4, 1.0, 1.0, 1, 1e-5, "fp32")
    with pytest.raises(errors.InputError, match="Flow Sample \\(Wan\\) works on Wan models only"):
        m["VInvWanSample"]().sample(dataclasses.replace(model, family="svd"), graph["cond"], graph["noise"], 4, 1.0,
                                    "conditioning")


def test_options_wan_does_not_have_are_refused(pack, graph, errors):
    m = pack.NODE_CLASS_MAPPINGS
    with pytest.raises(errors.InputError, match="reference 'text' does not apply to Wan"):
        m["VInvReferenceAttention"]().patch(graph["model"], graph["traj"], "all", 0.0, 1.0, 1.0, True, "all", "source")
    with pytest.raises(errors.InputError, match="dynamic_cfg"):
        m["VInvGuidedSample"]().sample(graph["patched"], graph["edit"], 3.0, True, "inverted", 0, "conditioning")
    with pytest.raises(errors.InputError, match="null-text"):
        m["VInvGuidedSample"]().sample(graph["patched"], graph["edit"], 3.0, False, "inverted", 0, "null-text")
    with pytest.raises(errors.InputError, match="the trajectory has 8 steps|inverted noise"):
        m["VInvWanSample"]().sample(graph["model"], graph["cond"], graph["noise"], 5, 1.0, "conditioning")


def test_wan22_nodes_two_experts_and_ti2v(pack, errors, tmp_path):
    """Load Wan Model takes a two-expert folder and a TI2V folder; Flow Invert / Flow Sample take the
    low-noise expert's guidance (recorded in the trajectory) and round-trip; VAE Encode adds TI2V's
    first-frame latent and Flow Sample of the inverted noise gives the latent back; a one-network
    model refuses a second guidance."""
    host = pack.nodes.host
    saved = dict(host._FALLBACK_DIRS)
    host._FALLBACK_DIRS.update(models=tmp_path / "models", input=tmp_path / "input", output=tmp_path / "output")
    write_tiny_wan(tmp_path / "models" / "Wan" / "two", seed=5, boundary_ratio=0.875)
    write_tiny_wan(tmp_path / "models" / "Wan" / "ti2v", seed=6, ti2v=True)
    write_tiny_wan(tmp_path / "models" / "Wan" / "one")
    m = pack.NODE_CLASS_MAPPINGS
    try:
        for name, size, g2 in (("two", 16, 3.0), ("ti2v", 32, 0.0)):
            model, = m["VInvLoadWan"]().load(name, "fp32", "none")
            frames = torch.rand(5, size, size, 3, generator=torch.Generator().manual_seed(1))
            latent, _ = m["VInvVAEEncode"]().encode(model, frames, "trim to 4k+1", "resize and crop", size, size,
                                                    "auto")["result"]
            assert (latent["vinv"]["image_latents"] is not None) == (name == "ti2v")
            cond, = m["VInvWanEncodeText"]().encode(model, "a red circle", "")["result"]
            traj, noise = m["VInvWanInvert"]().invert(model, cond, latent, 6, 4.0, 30, 1e-7, "anderson", "fp32",
                                                      guidance_2=g2)["result"]
            assert traj.conditioning.get("guidance_2") == (g2 or None)
            back, = m["VInvWanSample"]().sample(model, cond, noise, 6, 4.0, "conditioning", guidance_2=g2)
            assert rel(back["samples"], latent["samples"]) < 1e-3
        one, = m["VInvLoadWan"]().load("one", "fp32", "none")
        cond, = m["VInvWanEncodeText"]().encode(one, "a red circle", "")["result"]
        frames = torch.rand(5, 16, 16, 3, generator=torch.Generator().manual_seed(1))
        latent, _ = m["VInvVAEEncode"]().encode(one, frames, "trim to 4k+1", "resize and crop", 16, 16, "auto")["result"]
        with pytest.raises(errors.InputError, match="one network"):
            m["VInvWanInvert"]().invert(one, cond, latent, 4, 4.0, 3, 1e-7, "anderson", "fp32", guidance_2=2.0)
    finally:
        host._FALLBACK_DIRS.clear()
        host._FALLBACK_DIRS.update(saved)
