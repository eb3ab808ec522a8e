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
