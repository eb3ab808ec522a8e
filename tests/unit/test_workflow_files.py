"""The shipped workflows are what tools/build_workflows.py writes: the UI form (workflows/*.json,
listed by ComfyUI as templates) and the API form (workflows/api/*.json, queued by the host tests and
the demo) come from one description. That the frontend's own prompt for each UI form equals its API
form is checked in tests/browser/test_browser.py."""
import glob
import json

import pytest

from tests.conftest import ROOT, load_pack
from tools import build_workflows

NAMES = sorted(build_workflows.BUILDS)


@pytest.fixture(scope="module")
def built():
    pack = load_pack()
    return {name: build(pack) for name, build in build_workflows.BUILDS.items()}


@pytest.mark.parametrize("name", NAMES)
def test_shipped_files_are_the_generated_ones(built, name):
    wf = built[name]
    assert (ROOT / "workflows" / f"{name}.json").read_text() == build_workflows.dumps(wf.json()), \
        "run python tools/build_workflows.py"
    assert (ROOT / "workflows" / "api" / f"{name}.json").read_text() == build_workflows.dumps(wf.api()), \
        "run python tools/build_workflows.py"


def test_templates_are_the_ui_forms_only():
    """ComfyUI's /workflow_templates lists <pack>/workflows/*.json (app/custom_node_manager.py in
    0.3.75 and 0.33.0): only the UI forms may match, the API forms are one folder down."""
    listed = sorted(glob.glob(str(ROOT / "workflows" / "*.json")))
    assert [p.rsplit("/", 1)[1][:-5] for p in listed] == NAMES
    assert all("nodes" in json.loads(open(p).read()) for p in listed)
    assert sorted(p.name[:-5] for p in (ROOT / "workflows" / "api").glob("*.json")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_api_form_is_the_live_part_of_the_graph(built, name):
    ui, api = built[name].json(), built[name].api()
    live = {str(n["id"]): n for n in ui["nodes"] if n["type"] != "Note" and n["mode"] == 0}
    assert set(api) == set(live)
    for nid, node in api.items():
        assert node["class_type"] == live[nid]["type"] and node["_meta"]["title"] == live[nid]["title"]
        linked = {i["name"]: i["link"] for i in live[nid]["inputs"] if i["link"] is not None}
        links = {link[0]: link for link in ui["links"]}
        for key, value in node["inputs"].items():
            if key in linked:
                _, src, slot, dst, _, _ = links[linked[key]]
                assert value == [str(src), slot] and dst == int(nid) and str(src) in api
            else:
                assert value in live[nid]["widgets_values"]


def test_widget_spec_rule():
    rule = build_workflows.has_widget_spec
    assert rule((["a", "b"], {})) and rule(("INT", {"default": 1})) and rule(("COMFY_X", {"default": "a"}))
    assert not rule(("IMAGE",)) and not rule(("VINV_MODEL", {"tooltip": "t"}))
    assert not rule(("INT", {"default": 1, "forceInput": True}))


def test_trajectory_run_two_is_the_muted_group(built):
    """Run 2 of trajectory_save_load.json (its note: mute inversion and saving, unmute the group)."""
    wf = build_workflows.trajectory_save_load(load_pack())
    wf.set_mode({"VInvDDIMInvert", "VInvSaveTrajectory"}, 2)
    run2 = wf.set_mode({"VInvLoadTrajectory", "VInvDDIMSample", "VInvVAEDecode", "SaveImage"}, 0).api()
    kinds = sorted(n["class_type"] for n in run2.values())
    assert "VInvDDIMInvert" not in kinds and "VInvLoadTrajectory" in kinds and "SaveImage" in kinds
    load = next(n for n in run2.values() if n["class_type"] == "VInvLoadTrajectory")
    assert load["inputs"]["file"] == build_workflows.SAVED_TRAJECTORY
