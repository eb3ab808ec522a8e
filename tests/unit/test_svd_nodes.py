"""The Stable Video Diffusion nodes without ComfyUI, on the tiny random SVD folder: a whole graph
called by hand (load -> encode first frame -> VAE encode -> invert -> sample, reference attention
+ guided sample, save/load trajectory), and the refusals of the CogVideoX-only nodes."""
import json
import shutil

import pytest
import torch

from tests.conftest import load_pack
from tests.tiny_svd import write_tiny_svd

STEPS = 8  # 6 is too coarse for the random UNet: one inverse step does not converge in fp32


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
    root = tmp_path_factory.mktemp("comfy-svd")
    host = pack.nodes.host
    saved = dict(host._FALLBACK_DIRS)
    host._FALLBACK_DIRS.update(models=root / "models", input=root / "input", output=root / "output")
    folder = write_tiny_svd(root / "models" / "diffusers" / "tiny-svd")
    # the random VAE's latents have std ~0.3; scale them to ~unit variance as a trained VAE's
    # scaling factor does (at std 0.06 fp32 inversion of the random UNet does not converge)
    cfg = json.loads((folder / "vae" / "config.json").read_text())
    (folder / "vae" / "config.json").write_text(json.dumps({**cfg, "scaling_factor": 3.0}))
    other = root / "models" / "diffusers" / "not-svd" / "unet"  # a folder of another kind is not listed
    other.mkdir(parents=True)
    (other / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    shutil.copytree(root / "models" / "diffusers" / "tiny-svd", root / "models" / "SVD" / "tiny-svd-copy")
    m = pack.NODE_CLASS_MAPPINGS
    out = {}
    try:
        out["options"] = m["VInvLoadSVD"].INPUT_TYPES()["required"]["model"][0]
        out["model"], = m["VInvLoadSVD"]().load("tiny-svd", "fp32", "none")
        frames = torch.rand(3, 10, 14, 3, generator=torch.Generator().manual_seed(0))
        res = m["VInvVAEEncode"]().encode(out["model"], frames, "trim to 4k+1", "resize and crop", 8, 8, "auto")
        out["latent"], out["frames"] = res["result"]
        out["encode_note"] = res["ui"]["text"][0]
        out["cond"], = m["VInvSVDEncodeFirstFrame"]().encode(out["model"], out["frames"], 7, 127, 0.02, 0)
        inv = m["VInvSVDInvert"]().invert(out["model"], out["cond"], out["latent"], STEPS, 1.0, 1.0, 30, 1e-7, "fp32")
        out["traj"], out["noise"] = inv["result"]
        out["summary"] = inv["ui"]["vinv_trajectory"][0]
        out["rec"], = m["VInvSVDSample"]().sample(out["model"], out["cond"], out["noise"], STEPS, 1.0, 1.0)
        out["patched"], = m["VInvReferenceAttention"]().patch(out["model"], out["traj"], "all", 0.0, 1.0, 2.0, False,
                                                              "all", "source", temporal=True)
        g = m["VInvGuidedSample"]().sample(out["patched"], out["cond"], 1.0, False, "inverted", 0, "conditioning")
        out["guided"], out["mask_frames"] = g["result"]
        out["window"] = g["ui"]["vinv_guidance"][0]
        out["guided_svd"], _ = m["VInvSVDGuidedSample"]().sample(out["patched"], 1.0, 1.0, "inverted", 0)["result"]
        out["decoded"], = m["VInvVAEDecode"]().decode(out["model"], out["guided"], "auto")
        out["saved"] = m["VInvSaveTrajectory"]().save(out["traj"], "trajectories/svd")["ui"]["vinv_saved"][0]
        yield out
    finally:
        host._FALLBACK_DIRS.clear()
        host._FALLBACK_DIRS.update(saved)


def test_loader_lists_only_svd_folders(graph):
    # the bundled model first, then models/SVD, then models/diffusers
    assert graph["options"] == ["tiny-svd (bundled)", "tiny-svd-copy", "tiny-svd"]
    assert graph["model"].family == "svd"


def test_graph_shapes(graph):
    assert graph["frames"].shape == (3, 8, 8, 3)
    assert "3 frames used" in graph["encode_note"]
    assert graph["latent"]["samples"].shape == (1, 3, 4, 4, 4)
    assert graph["latent"]["vinv"]["pad_frames"] == 0
    assert graph["summary"]["family"] == "svd" and graph["summary"]["steps"] == STEPS
    assert graph["cond"].image_latents.shape == (1, 4, 4, 4)
    assert graph["decoded"].shape == (3, 8, 8, 3)
    assert graph["window"]["active"] == list(range(STEPS))
    # Guided Sample's edit mask is on by default for families with a prompt; SVD has none: no mask, no error
    assert "mask_fraction" not in graph["window"] and graph["mask_frames"].eq(1).all()


def test_invert_then_sample_reconstructs(graph):
    x0 = graph["latent"]["samples"]
    assert max(graph["summary"]["residuals"]) < 1e-3
    assert rel(graph["rec"]["samples"], x0) < 1e-3


def test_guided_sample_with_the_source_first_frame_reconstructs(graph):
    x0 = graph["latent"]["samples"]
    assert rel(graph["guided"]["samples"], graph["rec"]["samples"]) < 1e-4
    assert rel(graph["guided_svd"]["samples"], graph["rec"]["samples"]) < 1e-4
    assert rel(graph["guided"]["samples"], x0) < 1e-3
    assert graph["model"].reference is None and graph["patched"].reference is not None


def test_load_trajectory_round_trip(pack, graph):
    m = pack.NODE_CLASS_MAPPINGS
    saved = graph["saved"]
    name = f"{saved['subfolder']}/{saved['filename']} [output]"
    assert name in m["VInvLoadTrajectory"].INPUT_TYPES()["required"]["file"][0]
    traj, noise = m["VInvLoadTrajectory"]().load(graph["model"], name)["result"]
    assert traj.family == "svd" and torch.equal(traj.latents, graph["traj"].latents)
    assert torch.equal(noise["samples"], graph["noise"]["samples"])


def test_cogvideox_only_nodes_refuse_an_svd_model(pack, graph, errors):
    m, model = pack.NODE_CLASS_MAPPINGS, graph["model"]
    calls = {
        "DDIM Invert": lambda: m["VInvDDIMInvert"]().invert(model, graph["cond"], graph["latent"], 4, 1.0, False, 1,
                                                            1e-5, "anderson", 0.0, "fp32"),
        "DDIM Sample": lambda: m["VInvDDIMSample"]().sample(model, graph["cond"], graph["noise"], 4, 1.0, False,
                                                            "conditioning"),
        "Null-Text Inversion": lambda: m["VInvNullTextInversion"]().optimise(model, graph["traj"], 6.0, 1, 0.05,
                                                                             1e-5, "auto"),
        "Encode Text": lambda: m["VInvEncodeText"]().encode(model, "a prompt", ""),
    }
    for node, call in calls.items():
        with pytest.raises(errors.InputError, match=f"{node} works on CogVideoX models only.*Stable Video Diffusion"):
            call()


def test_cogvideox_only_options_are_refused_for_svd(pack, graph, errors):
    m = pack.NODE_CLASS_MAPPINGS
    with pytest.raises(errors.InputError, match="reference 'text' does not apply to Stable Video Diffusion"):
        m["VInvReferenceAttention"]().patch(graph["model"], graph["traj"], "all", 0.0, 1.0, 1.0, True, "all",
                                            "source")
    with pytest.raises(errors.InputError, match="reference_text 'edit' does not apply"):
        m["VInvReferenceAttention"]().patch(graph["model"], graph["traj"], "all", 0.0, 1.0, 1.0, False, "all",
                                            "edit")
    with pytest.raises(errors.InputError, match="dynamic_cfg"):
        m["VInvGuidedSample"]().sample(graph["patched"], graph["cond"], 1.0, True, "inverted", 0, "conditioning")
    with pytest.raises(errors.InputError, match="negative 'null-text'"):
        m["VInvGuidedSample"]().sample(graph["patched"], graph["cond"], 1.0, False, "inverted", 0, "null-text")
    with pytest.raises(errors.InputError, match="Encode First Frame \\(SVD\\)"):
        m["VInvGuidedSample"]().sample(graph["patched"], graph["cond"], 1.0, False, "inverted", 0, "conditioning",
                                       first_frame=torch.rand(1, 8, 8, 3))


def test_svd_nodes_refuse_a_text_conditioning_and_a_cogvideox_model(pack, graph, errors, tiny_folders):
    m = pack.NODE_CLASS_MAPPINGS
    with pytest.raises(errors.InputError, match="not an SVD first-frame conditioning"):
        m["VInvSVDInvert"]().invert(graph["model"], object(), graph["latent"], 4, 1.0, 1.0, 1, 1e-5, "fp32")
    from vidinv_pack.vidinv.models import cogvideox
    cog = cogvideox.load(tiny_folders["2b"], "fp32")
    with pytest.raises(errors.InputError, match="not Stable Video Diffusion"):
        m["VInvSVDEncodeFirstFrame"]().encode(cog, graph["frames"], 7, 127, 0.02, 0)
    with pytest.raises(errors.InputError, match="Stable Video Diffusion trajectory"):
        m["VInvReferenceAttention"]().patch(cog, graph["traj"], "all", 0.0, 1.0, 1.0, False, "all", "source")


def test_latent_preview_fits_for_svd(pack, graph):
    """The sampler's preview map (built when the host shows previews) works for SVD's VAE."""
    weight, bias = pack.nodes.preview.fit_rgb_factors(graph["model"])
    assert weight.shape == (4, 3) and bias.shape == (3,) and torch.isfinite(weight).all()


def test_svd_invert_node_says_when_steps_stop_above_the_tolerance(pack, graph):
    m = pack.NODE_CLASS_MAPPINGS
    inv = m["VInvSVDInvert"]().invert(graph["model"], graph["cond"], graph["latent"], 4, 1.0, 1.0, 0, 1e-9, "fp32")
    summary = inv["ui"]["vinv_trajectory"][0]
    assert [a["step"] for a in summary["above_tolerance"]] == [1, 2, 3, 4]  # no refinement at all
    assert summary["warning"].startswith("4 of 4 inversion steps ended above the tolerance 1e-09: step 1 (to sigma")
    graph_above = [k + 1 for k, r in enumerate(graph["summary"]["residuals"]) if r > 1e-7]  # the graph's own run
    assert [a["step"] for a in graph["summary"]["above_tolerance"]] == graph_above
    assert bool(graph["summary"]["warning"]) == bool(graph_above)
