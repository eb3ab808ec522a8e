"""What ComfyUI serves of the pack besides its nodes, at the addresses its frontend uses: each
node's help page (/extensions/<pack folder>/docs/<node id>.md) and each example workflow as a
template with its thumbnail (/api/workflow_templates/<pack folder>/<name>.jpg)."""
import urllib.request

import pytest

from tests.conftest import load_pack
from tests.host.helpers import ROOT
from tools.comfy_host import PACK_DIR_NAME
from tools.make_thumbnails import ui_workflows

pytestmark = pytest.mark.host


def fetch(comfy, path: str) -> bytes:
    with urllib.request.urlopen(comfy.url + path, timeout=30) as r:
        return r.read()


def test_help_pages_are_served_where_the_frontend_looks(comfy):
    for key in load_pack().NODE_CLASS_MAPPINGS:
        page = fetch(comfy, f"/extensions/{PACK_DIR_NAME}/docs/{key}.md")
        assert page == (ROOT / "js" / "docs" / f"{key}.md").read_bytes(), key


def test_workflows_are_templates_with_their_thumbnails(comfy):
    listed = comfy.get("/api/workflow_templates")[PACK_DIR_NAME]
    workflows = ui_workflows()
    assert len(workflows) >= 6
    for path in workflows:
        assert path.stem in listed
        thumb = fetch(comfy, f"/api/workflow_templates/{PACK_DIR_NAME}/{path.stem}.jpg")
        assert thumb == path.with_suffix(".jpg").read_bytes(), path.name
