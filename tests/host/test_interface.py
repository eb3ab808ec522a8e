"""A committed snapshot of our nodes' interface as the server reports it (/object_info).

Shared workflows break when an input or output changes without notice. When this fails on
purpose: keep the old node registered (DEPRECATED = True) or keep the old input name working,
then refresh the snapshot with  VIDINV_UPDATE_SNAPSHOT=1 pytest tests/host/test_interface.py"""
import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.host
SNAPSHOT = Path(__file__).with_name("interface_snapshot.json")
# combo lists that depend on the machine
DYNAMIC = {("VInvLoadCogVideoX", "model"), ("VInvLoadSVD", "model"), ("VInvLoadWan", "model"), ("VInvLoadTrajectory", "file"),
           ("VInvNativeLoadTrajectory", "file")}


def interface(object_info: dict) -> dict:
    out = {}
    for key, info in sorted(object_info.items()):
        if not key.startswith("VInv"):
            continue
        inputs = {}
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                kind = spec[0]
                opts = spec[1] if len(spec) > 1 else {}
                if (key, name) in DYNAMIC:
                    kind = "COMBO (machine-dependent)"
                entry = {"section": section, "type": kind}
                if "default" in opts and (key, name) not in DYNAMIC:
                    entry["default"] = opts["default"]
                inputs[name] = entry
        out[key] = {"inputs": inputs, "outputs": info["output"], "output_names": info["output_name"],
                    "category": info["category"], "output_node": info["output_node"],
                    "deprecated": info.get("deprecated", False)}
    return out


def test_interface_matches_the_snapshot(object_info):
    current = interface(object_info)
    if os.environ.get("VIDINV_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    saved = json.loads(SNAPSHOT.read_text())
    removed = sorted(set(saved) - set(current))
    assert not removed, f"nodes removed (keep them registered as deprecated): {removed}"
    for key, node in saved.items():
        for name, spec in node["inputs"].items():
            assert name in current[key]["inputs"], f"{key}: input {name!r} was removed or renamed"
        assert current[key] == node, (f"{key} changed; if intended, keep old workflows loading and refresh the "
                                      "snapshot (see this file's docstring)")
    added = sorted(set(current) - set(saved))
    assert not added, f"new nodes {added}: refresh the snapshot"
