"""A Wan image-to-video graph in the real host: a tiny random Wan 2.1 I2V folder under models/Wan is
listed by Load Wan Model; VAE Encode adds the first frame's conditioning to the latent; Flow Invert
(exact) -> Flow Sample and Reference Attention -> Guided Sample reconstruct the source; an edited
first frame on Guided Sample, and on FlowEdit (whose source prompt on both sides otherwise returns the source
exactly), changes the result; a text-to-video trajectory's model mismatch is a
readable node error."""
import pytest

from tests.host.helpers import node, saved_latent
from tests.tiny_wan import write_tiny_wan
from tools import comfy_host

pytestmark = pytest.mark.host
IMAGE = "vinv_red_circle_right_first_frame_green.png"  # copied into input/ by the pack
STEPS = 8


@pytest.fixture(scope="module")
def i2v_folder(comfy):
    return write_tiny_wan(comfy.base / "models" / "Wan" / "tiny-wan-i2v-host", seed=4, i2v=True)


def graph(model: str) -> dict:
    return {
        "1": node("VInvLoadWan", model=model, precision="fp32", offload="none"),
        "2": node("LoadImage", image=IMAGE),
        "3": node("RepeatImageBatch", image=["2", 0], amount=5),
        "4": node("VInvVAEEncode", model=["1", 0], images=["3", 0], frames="trim to 4k+1", size="resize and crop",
                  width=16, height=16, tiling="auto"),
        "5": node("VInvWanEncodeText", model=["1", 0], prompt="a red circle moving right", negative_prompt=""),
        "6": node("VInvWanInvert", model=["1", 0], conditioning=["5", 0], latent=["4", 0], steps=STEPS, guidance=3.0,
                  iterations=30, tolerance=1e-8, solver="anderson", trajectory_dtype="fp32"),
        "7": node("VInvWanSample", model=["1", 0], conditioning=["5", 0], latent=["6", 1], steps=STEPS, guidance=3.0,
                  negative="conditioning"),
        "8": node("VInvReferenceAttention", model=["1", 0], trajectory=["6", 0], blocks="all", start=0.0, end=1.0,
                  weight=4.0, reference_text=False, rows="all", reference_conditioning="source", temporal=False),
        "9": node("VInvGuidedSample", model=["8", 0], conditioning=["5", 0], guidance=3.0, dynamic_cfg=False,
                  start="inverted", seed=0, negative="conditioning", tuned_eta=1.0),
        "10": node("ImageInvert", image=["2", 0]),
        "11": node("VInvGuidedSample", model=["8", 0], conditioning=["5", 0], guidance=3.0, dynamic_cfg=False,
                   start="inverted", seed=0, negative="conditioning", tuned_eta=1.0, first_frame=["10", 0]),
        "12": node("VInvVAEDecode", model=["1", 0], latent=["11", 0], tiling="auto"),
        "13": node("PreviewImage", images=["12", 0]),
        **{nid: node("VInvFlowEdit", model=["1", 0], source_conditioning=["5", 0], target_conditioning=["5", 0],
                     latent=["4", 0], steps=STEPS, n_max=6, n_min=0, n_avg=1, source_guidance=3.0, target_guidance=3.0,
                     seed=0, **extra) for nid, extra in (("18", {}), ("19", {"first_frame": ["10", 0]}))},
        **{nid: node("SaveLatent", samples=[src, 0], filename_prefix=f"wan_i2v/{name}")
           for nid, src, name in (("14", "4", "source"), ("15", "7", "rec"), ("16", "9", "guided"),
                                  ("17", "11", "first_frame"), ("20", "18", "flowedit_same"),
                                  ("21", "19", "flowedit_first_frame"))},
    }



def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_wan_image_to_video_graph_reconstructs_in_the_host(comfy, i2v_folder):
    options = comfy.get("/object_info/VInvLoadWan")["VInvLoadWan"]["input"]["required"]["model"][0]
    assert "tiny-wan-i2v-host" in options
    entry = comfy.run(graph("tiny-wan-i2v-host"), timeout=300)
    assert entry["status"]["status_str"] == "success", comfy_host.execution_error(entry)
    src = saved_latent(comfy, entry, "14")
    assert src.shape == (1, 3, 12, 8, 8)
    assert rel(saved_latent(comfy, entry, "15"), src) < 1e-4
    assert rel(saved_latent(comfy, entry, "16"), src) < 1e-4
    assert rel(saved_latent(comfy, entry, "17"), src) > 1e-3  # the edited first frame conditions the sample
    assert bool((saved_latent(comfy, entry, "20") == src).all())  # FlowEdit, source on both sides: the source
    assert rel(saved_latent(comfy, entry, "21"), src) > 1e-3  # an edited first frame steers FlowEdit's target
    assert entry["outputs"]["6"]["vinv_trajectory"][0]["family"] == "wan"


def test_first_frame_on_a_text_to_video_wan_is_a_readable_node_error(comfy):
    prompt = {k: v for k, v in graph("tiny-wan (bundled)").items() if k in ("1", "2", "3", "4", "5", "6", "8", "10", "11")}
    prompt["4"]["inputs"].update(width=0, height=0)
    prompt["6"]["inputs"].update(steps=2, iterations=0)
    prompt["22"] = node("SaveLatent", samples=["11", 0], filename_prefix="wan_i2v/never")
    entry = comfy.run(prompt, timeout=300)
    assert entry["status"]["status_str"] == "error"
    err = comfy_host.execution_error(entry)
    assert err["node_type"] == "VInvGuidedSample" and "Traceback" not in err["exception_message"]
    assert "text-to-video model: it takes no first frame" in err["exception_message"]
