"""Helpers for the tests that drive a real ComfyUI over HTTP."""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_workflow(name: str) -> dict:
    """A workflow of workflows/ in the editor's UI format."""
    return json.loads((ROOT / "workflows" / name).read_text())


def api_prompt(name: str, overrides: dict | None = None) -> dict:
    """The shipped API form of a workflow (workflows/api/, written by tools/build_workflows.py next
    to the UI form); overrides are {(title or type, input): value}."""
    return override(json.loads((ROOT / "workflows" / "api" / name).read_text()), overrides or {}, name)


def override(prompt: dict, overrides: dict, name: str = "the prompt") -> dict:
    for (who, key), value in overrides.items():
        hits = [n for n in prompt.values() if who in (n["class_type"], n["_meta"]["title"])]
        assert hits, f"no node {who!r} in {name}"
        for n in hits:
            n["inputs"][key] = value
    return prompt


def outputs_of(entry: dict, class_type: str, prompt: dict) -> list[dict]:
    return [out for nid, out in entry["outputs"].items() if prompt[nid]["class_type"] == class_type]


def node(class_type: str, **inputs) -> dict:
    """One API-form node, titled by its class."""
    return {"class_type": class_type, "inputs": inputs, "_meta": {"title": class_type}}


def svd_round_trip(model: str, image: str, size: int, steps: int, iterations: int, tolerance: float,
                   sample_steps: int | None = None) -> dict:
    """Nodes "1".."7" of an SVD graph: Load SVD, three copies of `image` VAE-encoded at size x size,
    the first frame encoded, Euler Invert (exact) and Euler Sample of its noise."""
    return {
        "1": node("VInvLoadSVD", model=model, precision="fp32", offload="none"),
        "2": node("LoadImage", image=image),
        "3": node("RepeatImageBatch", image=["2", 0], amount=3),
        "4": node("VInvVAEEncode", model=["1", 0], images=["3", 0], frames="trim to 4k+1", size="resize and crop",
                  width=size, height=size, tiling="auto"),
        "5": node("VInvSVDEncodeFirstFrame", model=["1", 0], image=["4", 1], fps=7, motion_bucket_id=127,
                  noise_aug_strength=0.02, seed=0),
        "6": node("VInvSVDInvert", model=["1", 0], conditioning=["5", 0], latent=["4", 0], steps=steps,
                  min_guidance=1.0, max_guidance=1.0, iterations=iterations, tolerance=tolerance,
                  trajectory_dtype="fp32"),
        "7": node("VInvSVDSample", model=["1", 0], conditioning=["5", 0], latent=["6", 1],
                  steps=steps if sample_steps is None else sample_steps, min_guidance=1.0, max_guidance=1.0),
    }



def saved_latent(comfy, entry: dict, nid: str):
    """The latent a SaveLatent node `nid` of a finished prompt wrote, in float64."""
    from safetensors.torch import load_file
    item = entry["outputs"][nid]["latents"][0]
    return load_file(str(comfy.base / "output" / item["subfolder"] / item["filename"]))["latent_tensor"].double()
