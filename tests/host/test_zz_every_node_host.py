"""Every registered node has run in the real host (issue 37). ComfyUI runs nodes inside
``torch.inference_mode()``; a node proven only by library tests outside the host can fail for every
user (Null-Text and Prompt-Tuning Inversion did). `tools.comfy_host` records the node types each
successful prompt of this test process ran (the nodes its outputs depend on); this module runs after
the other host modules (its name sorts last) and fails for any registered node none of them ran.
It is skipped, saying why, when the session did not run the whole host suite (a -k / -m selection or
a single file), since then the record is partial by choice."""
from pathlib import Path

import pytest

from tests.conftest import DESELECTED, load_pack
from tools import comfy_host

pytestmark = pytest.mark.host
HOST_TESTS = Path(__file__).resolve().parent


def partial_selection(items) -> str | None:
    """Why this session's record of host runs is partial by choice, or None when it is whole."""
    if any(Path(item.path).parent == HOST_TESTS for item in DESELECTED):
        return "host tests were deselected (-k / -m)"
    modules = {p.name for p in HOST_TESTS.glob("test_*.py")}
    collected = {Path(item.path).name for item in items if Path(item.path).parent == HOST_TESTS}
    if collected != modules:
        return f"host modules not collected: {', '.join(sorted(modules - collected))}"
    return None


def test_every_registered_node_ran_in_the_host(request):
    items = request.session.items
    reason = partial_selection(items)
    if reason:
        pytest.skip(f"the record of host runs is partial: {reason}")
    host_items = [item for item in items if Path(item.path).parent == HOST_TESTS]
    assert host_items[-1] is request.node, "this check must run after every other host test"
    never = sorted(set(load_pack().NODE_CLASS_MAPPINGS) - comfy_host.EXECUTED)
    assert not never, (f"registered nodes that no host test ran in a successful prompt: {never}. Queue each in a "
                       "prompt of a host test (tests/host): ComfyUI runs nodes under torch.inference_mode(), which "
                       "library tests outside the host do not see.")
