"""The host's own frontend in headless Chromium: every example workflow's UI form, loaded in the
editor, makes exactly the shipped API form (what the tests and the demo queue); edit.json queued
from the editor runs, and our extension draws the residual plot and the summaries with the values
the server returned."""
import json
import os
import time
from pathlib import Path

import pytest

from tests.host.helpers import ROOT, api_prompt, load_workflow
from tools.build_workflows import BUILDS
from tools.webdriver import Browser

pytestmark = [pytest.mark.browser, pytest.mark.host]
ARTIFACTS = Path(os.environ.get("VIDINV_ARTIFACTS", ROOT / "test-artifacts"))


@pytest.fixture(scope="module")
def browser(comfy):
    with Browser() as b:
        b.get(comfy.url)
        b.wait_for("window.app && window.app.graph && window.app.graph._nodes && "
                   "window.app.graph._nodes.length >= 0 && document.querySelector('canvas') !== null", 180)
        yield b


def server_reads(inputs: dict, prefix: str = "") -> dict:
    """{input name: spec} for every input a node declares in /object_info, the inputs nested in a
    V3 dynamic combo's options under "parent.child" (as the server reads them from a prompt)."""
    out = {}
    for section in ("required", "optional"):
        for name, spec in inputs.get(section, {}).items():
            out[prefix + name] = spec
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            for option in opts.get("options", []):
                if isinstance(option, dict) and "inputs" in option:
                    out.update(server_reads(option["inputs"], f"{prefix}{name}."))
    return out


def default_of(spec):
    """What the editor sets an input to when a workflow gives no value: the declared default, else
    the first choice."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in opts:
        return opts["default"]
    choices = (spec[0] if isinstance(spec[0], list) else opts.get("options")) or [None]  # [] : no files listed
    return choices[0]["key"] if isinstance(choices[0], dict) else choices[0]


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_the_editors_prompt_is_the_shipped_api_form(browser, object_info, name):
    """app.graphToPrompt() is what the Queue button sends. For each workflow it is the API form in
    workflows/api/ as the server reads it: the same nodes, titles and inputs; anything more that
    the editor sends is an input the shipped form leaves at the server's default (newer ComfyUIs
    add inputs: CreateVideo's bit_depth, SaveVideo's format.codec in 0.33.0) or a value the server
    does not read (LoadVideo's 'video-preview' widget)."""
    browser.run("await window.app.loadGraphData(arguments[0]); return true;", load_workflow(f"{name}.json"))
    sent = browser.run("return (await window.app.graphToPrompt()).output;")
    shipped = api_prompt(f"{name}.json")
    assert sorted(sent, key=int) == sorted(shipped, key=int)
    for nid, node in shipped.items():
        where = f"{name}.json node {nid} ({node['_meta']['title']})"
        assert {k: sent[nid][k] for k in ("class_type", "_meta")} == {k: node[k] for k in ("class_type", "_meta")}, where
        reads = server_reads(object_info[node["class_type"]]["input"])
        assert set(node["inputs"]) <= set(reads), f"{where}: the server does not read {set(node['inputs']) - set(reads)}"
        read = {k: v for k, v in sent[nid]["inputs"].items() if k in reads}
        left_out = set(read) - set(node["inputs"])
        assert not left_out & set(object_info[node["class_type"]]["input"]["required"]), f"{where}: {left_out}"
        assert read == {**{k: default_of(reads[k]) for k in read}, **node["inputs"]}, where


def test_edit_workflow_in_the_browser(comfy, browser):
    workflow = load_workflow("edit.json")
    browser.run("await window.app.loadGraphData(arguments[0]); return true;", workflow)
    count = browser.run("return window.app.graph._nodes.length;")
    assert count == len(workflow["nodes"])
    before = set(comfy.get("/history", timeout=30) or {})
    browser.run("await window.app.queuePrompt(0, 1); return true;")
    entry = None
    deadline = time.time() + 900
    while entry is None and time.time() < deadline:
        hist = comfy.get("/history", timeout=30) or {}
        done = [k for k in hist if k not in before and hist[k].get("status", {}).get("completed") is not None]
        entry = hist[done[0]] if done else None
        time.sleep(1)
    assert entry is not None, comfy.tail()
    assert entry["status"]["status_str"] == "success", entry["status"]
    prompt = entry["prompt"][2]
    inv_id = next(k for k, v in prompt.items() if v["class_type"] == "VInvDDIMInvert")
    summary = entry["outputs"][inv_id]["vinv_trajectory"][0]
    guided_id = next(k for k, v in prompt.items() if v["class_type"] == "VInvGuidedSample")
    window = entry["outputs"][guided_id]["vinv_guidance"][0]

    shown = browser.wait_for("(() => { const p = document.querySelector('.vinv-trajectory');"
                       " const c = p && p.querySelector('canvas.vinv-residual-plot');"
                       " return p && c ? {steps: p.dataset.steps, size: p.dataset.sizeMb, dtype: p.dataset.dtype,"
                       " shape: p.dataset.shape, residuals: c.dataset.residuals, text: p.textContent,"
                       " w: c.width, h: c.height} : null; })()", 60)
    assert int(shown["steps"]) == summary["steps"]
    assert float(shown["size"]) == summary["size_mb"] and shown["dtype"] == summary["dtype"]
    assert shown["shape"] == "x".join(str(s) for s in summary["latent_shape"])
    assert json.loads(shown["residuals"]) == pytest.approx(summary["residuals"])
    assert f"{summary['steps']} steps" in shown["text"] and shown["w"] > 0 and shown["h"] > 0
    painted = browser.run("const c = document.querySelector('canvas.vinv-residual-plot');"
                    "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                    "let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 200 && d[i] < 150) n++;"
                    "return n;")
    assert painted > 20, "the residual curve was not drawn"
    win = browser.wait_for("(() => { const p = document.querySelector('.vinv-window');"
                     " return p ? {active: p.dataset.active, text: p.textContent} : null; })()", 60)
    assert json.loads(win["active"]) == window["active"]
    # the first-run templates dialog may cover the canvas: close dialogs, centre on DDIM Invert
    browser.close_dialogs()
    browser.run("const n = window.app.graph._nodes.find(n => n.type === 'VInvDDIMInvert');"
          "const c = window.app.canvas; if (n && c.centerOnNode) c.centerOnNode(n);"
          "c.setDirty(true, true); return true;")
    time.sleep(1)
    shot = browser.screenshot(ARTIFACTS / "browser_edit_workflow.png")
    assert shot.stat().st_size > 10_000
