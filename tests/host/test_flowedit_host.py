"""FlowEdit in the real host (under ComfyUI's torch.inference_mode()) on the bundled tiny Wan: with
the source prompt on both sides and no tail it returns the VAE-encoded source exactly; with another
prompt (and a tail) it edits; a window past the steps is a readable node
error."""
import pytest

from tests.host.helpers import node, saved_latent
from tools import comfy_host

pytestmark = pytest.mark.host
IMAGE = "vinv_red_circle_right_first_frame_green.png"  # copied into input/ by the pack
STEPS = 6


def graph(n_max: int = 4) -> dict:
    def flowedit(target: str, seed: int, n_min: int = 0) -> dict:
        return node("VInvFlowEdit", model=["1", 0], source_conditioning=["5", 0], target_conditioning=[target, 0],
                    latent=["4", 0], steps=STEPS, n_max=n_max, n_min=n_min, n_avg=1, source_guidance=2.0,
                    target_guidance=2.0 if target == "5" else 5.0, seed=seed)
    return {
        "1": node("VInvLoadWan", model="tiny-wan (bundled)", precision="fp32", offload="none"),
        "2": node("LoadImage", image=IMAGE),
        "3": node("RepeatImageBatch", image=["2", 0], amount=5),
        "4": node("VInvVAEEncode", model=["1", 0], images=["3", 0], frames="trim to 4k+1", size="resize and crop",
                  width=32, height=32, tiling="auto"),
        "5": node("VInvWanEncodeText", model=["1", 0], prompt="a red circle moving right", negative_prompt=""),
        "6": node("VInvWanEncodeText", model=["1", 0], prompt="a blue circle moving right", negative_prompt=""),
        "7": flowedit("5", 0),
        "8": flowedit("6", 3, n_min=1),
        "10": node("VInvVAEDecode", model=["1", 0], latent=["8", 0], tiling="auto"),
        "11": node("PreviewImage", images=["10", 0]),
        **{nid: node("SaveLatent", samples=[src, 0], filename_prefix=f"flowedit/{name}")
           for nid, src, name in (("12", "4", "source"), ("13", "7", "same"), ("14", "8", "edit"))},
    }


def test_flowedit_runs_in_the_host(comfy):
    entry = comfy.run(graph(), timeout=300)
    assert entry["status"]["status_str"] == "success", comfy_host.execution_error(entry)
    src, same = saved_latent(comfy, entry, "12"), saved_latent(comfy, entry, "13")
    edit = saved_latent(comfy, entry, "14")
    assert same.shape == src.shape and bool((same == src).all())
    assert float((edit - src).norm() / src.norm()) > 1e-2


def test_window_past_the_steps_is_a_readable_node_error(comfy):
    prompt = {k: v for k, v in graph(n_max=STEPS + 1).items() if k in ("1", "2", "3", "4", "5", "6", "8", "14")}
    entry = comfy.run(prompt, timeout=300)
    assert entry["status"]["status_str"] == "error"
    err = comfy_host.execution_error(entry)
    assert err["node_type"] == "VInvFlowEdit" and "Traceback" not in err["exception_message"]
    assert f"n_max {STEPS + 1} is more than the {STEPS} steps" in err["exception_message"]
