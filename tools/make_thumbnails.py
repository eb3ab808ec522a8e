"""Write the template thumbnail of every example workflow: workflows/<name>.jpg, a picture of
the workflow's graph as ComfyUI's own frontend draws it (headless Chromium on the host).

    python tools/make_thumbnails.py        # -> workflows/*.jpg (rerun after build_workflows.py)

ComfyUI lists a pack's workflows/ (or example_workflows/) as templates and shows
/api/workflow_templates/<pack folder>/<name>.jpg beside each one. Needs the host of
tools/comfy_host.py and Debian's chromium + chromium-driver, as the browser test does.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import comfy_host  # noqa: E402
from tools.webdriver import Browser  # noqa: E402

WIDTH = 800  # thumbnail width in pixels; the height follows the browser window's canvas
WINDOW = (3200, 1800)  # large enough that the whole graph fits near zoom 1, drawn in full detail

# hide the app around the canvas (menus, side bar, minimap, banners); keep the graph and the
# widgets drawn as HTML over it (text boxes, notes, previews)
ONLY_THE_GRAPH = (
    "const st = document.createElement('style');"
    "st.textContent = 'body * { visibility: hidden !important; }"
    " #graph-canvas, .dom-widget, .dom-widget * { visibility: visible !important; }';"
    "document.head.appendChild(st);")

# scale and move the canvas so every node and group fits, then report the canvas's place on the page
FIT_GRAPH = (
    "const c = window.app.canvas, g = window.app.graph, el = c.canvas;"
    "const boxes = g._nodes.map(n => [n.pos[0], n.pos[1] - 40, n.pos[0] + n.size[0], n.pos[1] + n.size[1]])"
    "  .concat((g._groups || []).map(x => [x._bounding[0], x._bounding[1],"
    "           x._bounding[0] + x._bounding[2], x._bounding[1] + x._bounding[3]]));"
    "const x0 = Math.min(...boxes.map(b => b[0])), y0 = Math.min(...boxes.map(b => b[1]));"
    "const x1 = Math.max(...boxes.map(b => b[2])), y1 = Math.max(...boxes.map(b => b[3]));"
    "const r = el.getBoundingClientRect(), pad = 0.94;"
    "const s = Math.min(r.width / (x1 - x0), r.height / (y1 - y0)) * pad;"
    "c.ds.scale = s; c.ds.offset[0] = (r.width / s - (x1 - x0)) / 2 - x0;"
    "c.ds.offset[1] = (r.height / s - (y1 - y0)) / 2 - y0;"
    "c.render_info = false; c.setDirty(true, true); c.draw(true, true);"
    "return {x: r.left, y: r.top, w: r.width, h: r.height, ratio: window.devicePixelRatio || 1};")


def fingerprint(workflow: dict) -> str:
    """Stored as the JPEG's comment: a thumbnail of another version of the graph is stale."""
    return "vinv-workflow-sha256:" + hashlib.sha256(json.dumps(workflow, sort_keys=True).encode()).hexdigest()


def ui_workflows() -> list[Path]:
    """The example workflows in UI format (the ones the template browser opens)."""
    return [p for p in sorted((ROOT / "workflows").glob("*.json")) if "nodes" in json.loads(p.read_text())]


def main() -> None:
    from PIL import Image

    host = comfy_host.Host(comfy_host.DEFAULT_HOST_DIR).build()
    with tempfile.TemporaryDirectory(prefix="vinv-thumbs-") as tmp:
        base = host.base(Path(tmp) / "base")
        with comfy_host.Server(host, base) as server, Browser() as b:
            b.resize(*WINDOW)
            b.get(server.url)
            b.wait_for("window.app && window.app.graph && document.querySelector('canvas') !== null", 180)
            for path in ui_workflows():
                workflow = json.loads(path.read_text())
                b.run("await window.app.loadGraphData(arguments[0]); return true;", workflow)
                assert b.run("return window.app.graph._nodes.length;") == len(workflow["nodes"]), path.name
                b.close_dialogs()
                b.run(ONLY_THE_GRAPH + "return true;")
                time.sleep(1)
                box = b.run(FIT_GRAPH)
                time.sleep(1)
                shot = b.screenshot(Path(tmp) / f"{path.stem}.png")
                k = box["ratio"]
                with Image.open(shot) as im:
                    crop = im.convert("RGB").crop((round(box["x"] * k), round(box["y"] * k),
                                                   round((box["x"] + box["w"]) * k), round((box["y"] + box["h"]) * k)))
                    thumb = crop.resize((WIDTH, round(WIDTH * crop.height / crop.width)), Image.LANCZOS)
                    out = path.with_suffix(".jpg")
                    thumb.save(out, quality=85, optimize=True, comment=fingerprint(workflow))
                print(f"wrote {out.relative_to(ROOT)} ({thumb.width}x{thumb.height})")


if __name__ == "__main__":
    main()
