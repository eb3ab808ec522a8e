"""Edit-friendly inversion and the edit mask in the real host, on the bundled tiny CogVideoX: Edit-
Friendly Invert -> Edit-Friendly Sample reconstructs the source (also from a start_at that left the
noisiest steps unsolved), Reference Attention + Guided Sample with a mask threshold edits and returns the
mask as IMAGE frames (mask_grow and a lower mask_level widen it); the trajectory's noise on DDIM Sample is a
readable node error."""
import pytest

from tests.host.helpers import node, saved_latent
from tools import comfy_host

pytestmark = pytest.mark.host
IMAGE = "vinv_red_circle_right_first_frame_green.png"  # copied into input/ by the pack
STEPS = 6


def graph() -> dict:
    return {
        "1": node("VInvLoadCogVideoX", model="tiny-cogvideox (bundled)", precision="fp32", offload="none"),
        "2": node("LoadImage", image=IMAGE),
        "3": node("RepeatImageBatch", image=["2", 0], amount=9),
        "4": node("VInvVAEEncode", model=["1", 0], images=["3", 0], frames="trim to 4k+1", size="resize and crop",
                  width=0, height=0, tiling="auto"),
        "5": node("VInvEncodeText", model=["1", 0], prompt="a red circle moving right", negative_prompt=""),
        "6": node("VInvEncodeText", model=["1", 0], prompt="a green circle moving right", negative_prompt=""),
        "7": node("VInvFriendlyInvert", model=["1", 0], conditioning=["5", 0], latent=["4", 0], steps=STEPS,
                  guidance=1.0, seed=3, trajectory_dtype="fp32"),
        "8": node("VInvFriendlySample", model=["1", 0], trajectory=["7", 0], conditioning=["5", 0], guidance=1.0,
                  negative="conditioning"),
        "9": node("VInvReferenceAttention", model=["1", 0], trajectory=["7", 0], blocks="all", start=0.0, end=1.0,
                  weight=4.0, reference_text=False, rows="all", reference_conditioning="source", temporal=False),
        "10": node("VInvGuidedSample", model=["9", 0], conditioning=["6", 0], guidance=5.0, dynamic_cfg=False,
                   start="inverted", seed=0, negative="conditioning", tuned_eta=1.0, mask_threshold=0.9),
        "11": node("SaveImage", images=["10", 1], filename_prefix="friendly/mask"),
        "12": node("SaveLatent", samples=["4", 0], filename_prefix="friendly/source"),
        "13": node("SaveLatent", samples=["8", 0], filename_prefix="friendly/rec"),
        "14": node("SaveLatent", samples=["10", 0], filename_prefix="friendly/edit"),
        # the noisiest half never solved (start_at): Edit-Friendly Sample starts where it was
        "15": node("VInvFriendlyInvert", model=["1", 0], conditioning=["5", 0], latent=["4", 0], steps=STEPS,
                   guidance=1.0, seed=3, trajectory_dtype="fp32", start_at=0.5),
        "16": node("VInvFriendlySample", model=["1", 0], trajectory=["15", 0], conditioning=["5", 0], guidance=1.0,
                   negative="conditioning"),
        "17": node("SaveLatent", samples=["16", 0], filename_prefix="friendly/rec_late"),
        # the same edit with the mask grown by a latent cell
        "18": node("VInvGuidedSample", model=["9", 0], conditioning=["6", 0], guidance=5.0, dynamic_cfg=False,
                   start="inverted", seed=0, negative="conditioning", tuned_eta=1.0, mask_threshold=0.9, mask_grow=1),
        "19": node("SaveImage", images=["18", 1], filename_prefix="friendly/mask_grown"),
        # and cut at half of Otsu's level
        "20": node("VInvGuidedSample", model=["9", 0], conditioning=["6", 0], guidance=5.0, dynamic_cfg=False,
                   start="inverted", seed=0, negative="conditioning", tuned_eta=1.0, mask_threshold=0.9,
                   mask_level=0.5),
        "21": node("SaveImage", images=["20", 1], filename_prefix="friendly/mask_looser"),
    }



def test_edit_friendly_graph_reconstructs_and_masks_in_the_host(comfy):
    entry = comfy.run(graph(), timeout=600)
    assert entry["status"]["status_str"] == "success", comfy_host.execution_error(entry)
    src, rec = saved_latent(comfy, entry, "12"), saved_latent(comfy, entry, "13")
    assert float((rec - src).norm() / src.norm()) < 1e-4
    assert float((saved_latent(comfy, entry, "14") - src).norm() / src.norm()) > 1e-3
    assert len(entry["outputs"]["11"]["images"]) == 9  # one mask frame per video frame
    assert entry["outputs"]["7"]["vinv_trajectory"][0]["kind"] == "edit-friendly"
    fraction = entry["outputs"]["10"]["vinv_guidance"][0]["mask_fraction"]
    # the default guide and mask_level: an edit-friendly trajectory is followed itself; CogVideoX text-to-video cuts
    # at 0.9 x Otsu's level
    assert entry["outputs"]["10"]["vinv_guidance"][0]["guide"] == "trajectory"
    assert entry["outputs"]["10"]["vinv_guidance"][0]["mask_level"] == 0.9
    assert 0 < fraction < entry["outputs"]["18"]["vinv_guidance"][0]["mask_fraction"] <= 1  # mask_grow widens it
    assert fraction < entry["outputs"]["20"]["vinv_guidance"][0]["mask_fraction"] <= 1  # so does a lower mask_level
    late = entry["outputs"]["15"]["vinv_trajectory"][0]
    assert late["first_step"] == STEPS // 2 and late["calls"] == [1] * (STEPS // 2) + [0] * (STEPS // 2)
    assert float((saved_latent(comfy, entry, "17") - src).norm() / src.norm()) < 1e-4


def test_edit_friendly_noise_on_ddim_sample_is_a_readable_node_error(comfy):
    prompt = {k: v for k, v in graph().items() if k in ("1", "2", "3", "4", "5", "7")}
    prompt["7"]["inputs"].update(steps=2)
    prompt["20"] = node("VInvDDIMSample", model=["1", 0], conditioning=["5", 0], latent=["7", 1], steps=2,
                        guidance=1.0, dynamic_cfg=False, negative="conditioning")
    prompt["21"] = node("SaveLatent", samples=["20", 0], filename_prefix="friendly/never")
    entry = comfy.run(prompt, timeout=300)
    assert entry["status"]["status_str"] == "error"
    err = comfy_host.execution_error(entry)
    assert err["node_type"] == "VInvDDIMSample" and "Traceback" not in err["exception_message"]
    assert "noise of an edit-friendly trajectory" in err["exception_message"]
