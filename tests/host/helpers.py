"""Helpers for the tests that drive a real ComfyUI over HTTP."""
import json
from pathlib import Path

from tools import workflow_api

ROOT = Path(__file__).resolve().parents[2]


def load_workflow(name: str) -> dict:
    return json.loads((ROOT / "workflows" / name).read_text())


def api_prompt(name: str, object_info: dict, overrides: dict | None = None) -> dict:
    """A workflow from workflows/ in API format; overrides are {(title or type, input): value}."""
    prompt = workflow_api.convert(load_workflow(name), object_info)
    for (who, key), value in (overrides or {}).items():
        hits = [n for n in prompt.values() if who in (n["class_type"], n["_meta"]["title"])]
        assert hits, f"no node {who!r} in {name}"
        for n in hits:
            n["inputs"][key] = value
    return prompt


def outputs_of(entry: dict, class_type: str, prompt: dict) -> list[dict]:
    return [out for nid, out in entry["outputs"].items() if prompt[nid]["class_type"] == class_type]
