"""The host's own frontend in headless Chromium: load edit.json, queue it, and check that our
extension draws the residual plot and the summaries with the values the server returned."""
import json
import os
import time
from pathlib import Path

import pytest

from tests.host.helpers import ROOT, load_workflow
from tools.webdriver import Browser

pytestmark = [pytest.mark.browser, pytest.mark.host]
ARTIFACTS = Path(os.environ.get("VIDINV_ARTIFACTS", ROOT / "test-artifacts"))


def test_edit_workflow_in_the_browser(comfy):
    workflow = load_workflow("edit.json")
    with Browser() as b:
        b.get(comfy.url)
        b.wait_for("window.app && window.app.graph && window.app.graph._nodes && "
                   "window.app.graph._nodes.length >= 0 && document.querySelector('canvas') !== null", 180)
        b.run("await window.app.loadGraphData(arguments[0]); return true;", workflow)
        count = b.run("return window.app.graph._nodes.length;")
        assert count == len(workflow["nodes"])
        before = set(comfy.get("/history", timeout=30) or {})
        b.run("await window.app.queuePrompt(0, 1); return true;")
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

        shown = b.wait_for("(() => { const p = document.querySelector('.vinv-trajectory');"
                           " const c = p && p.querySelector('canvas.vinv-residual-plot');"
                           " return p && c ? {steps: p.dataset.steps, size: p.dataset.sizeMb, dtype: p.dataset.dtype,"
                           " shape: p.dataset.shape, residuals: c.dataset.residuals, text: p.textContent,"
                           " w: c.width, h: c.height} : null; })()", 60)
        assert int(shown["steps"]) == summary["steps"]
        assert float(shown["size"]) == summary["size_mb"] and shown["dtype"] == summary["dtype"]
        assert shown["shape"] == "x".join(str(s) for s in summary["latent_shape"])
        assert json.loads(shown["residuals"]) == pytest.approx(summary["residuals"])
        assert f"{summary['steps']} steps" in shown["text"] and shown["w"] > 0 and shown["h"] > 0
        painted = b.run("const c = document.querySelector('canvas.vinv-residual-plot');"
                        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                        "let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 200 && d[i] < 150) n++;"
                        "return n;")
        assert painted > 20, "the residual curve was not drawn"
        win = b.wait_for("(() => { const p = document.querySelector('.vinv-window');"
                         " return p ? {active: p.dataset.active, text: p.textContent} : null; })()", 60)
        assert json.loads(win["active"]) == window["active"]
        # the first-run templates dialog may cover the canvas: close dialogs, centre on DDIM Invert
        b.close_dialogs()
        b.run("const n = window.app.graph._nodes.find(n => n.type === 'VInvDDIMInvert');"
              "const c = window.app.canvas; if (n && c.centerOnNode) c.centerOnNode(n);"
              "c.setDirty(true, true); return true;")
        time.sleep(1)
        shot = b.screenshot(ARTIFACTS / "browser_edit_workflow.png")
        assert shot.stat().st_size > 10_000
