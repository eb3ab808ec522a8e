import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
BUNDLED = ROOT / "assets" / "tiny-cogvideox"

torch.set_num_threads(int(os.environ.get("VIDINV_TEST_THREADS", "2")))


def load_pack(name: str = "vidinv_pack"):
    """Import the pack folder as a package the way ComfyUI does (any folder name)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


DESELECTED: list = []  # the items a -m / -k selection left out of this session


def pytest_deselected(items):
    DESELECTED.extend(items)


@pytest.fixture(autouse=True)
def _inference_mode_marker(request):
    """Tests marked ``@pytest.mark.inference_mode`` run inside ``torch.inference_mode()``, as
    ComfyUI runs every node (its execution.py), fixtures of function scope included: what autograd,
    in-place updates or stored tensors do differently there shows up outside the host too."""
    if request.node.get_closest_marker("inference_mode") is None:
        yield
        return
    with torch.inference_mode():
        yield


@pytest.fixture(scope="module")
def one_thread():
    """For modules on tiny SVD UNets (`pytestmark = pytest.mark.usefixtures("one_thread")`): their
    ops are too small for intra-op threads, and on a busy machine a second thread only waits for a
    core (10x slower). Restored after the module."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory):
    """Tiny random-weight folders of every CogVideoX layout, written once per session."""
    from tests.tiny_models import VARIANTS, write_tiny_model
    root = tmp_path_factory.mktemp("tiny-models")
    return {v: write_tiny_model(root / f"tiny-{v}", v) for v in VARIANTS}


@pytest.fixture(scope="session")
def bundled_model():
    from vidinv.models import cogvideox
    if not BUNDLED.is_dir():
        pytest.fail(f"the bundled model is missing at {BUNDLED}")
    return cogvideox.load(BUNDLED, "fp32")


def as_float64(model):
    """A float64 copy of a loaded model value (modules converted in place: test-only models)."""
    import dataclasses
    for m in (model.transformer, model.vae, model.text_encoder):
        m.double()
    return dataclasses.replace(model, dtype=torch.float64)


@pytest.fixture(scope="session")
def tiny64(tiny_folders):
    """Tiny random models of every layout, loaded in float64, by variant name."""
    from vidinv.models import cogvideox
    cache = {}

    def get(variant):
        if variant not in cache:
            cache[variant] = as_float64(cogvideox.load(tiny_folders[variant], "fp32"))
        return cache[variant]
    return get


# ----------------------------------------------------------------------------- the real host

@pytest.fixture(scope="session")
def host():
    from tools import comfy_host
    return comfy_host.configured().build()


@pytest.fixture(scope="session")
def comfy(host, tmp_path_factory):
    """One ComfyUI server for the session, stopped by its PID whatever happens: 0.3.75 built from
    PyPI (cached in .host/), or the tree VIDINV_COMFYUI names (tools/comfy_host.py)."""
    from tools import comfy_host
    base = host.base(tmp_path_factory.mktemp("comfy-base"))
    server = comfy_host.Server(host, base)
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert server.proc.poll() is not None


@pytest.fixture(scope="session")
def object_info(comfy):
    return comfy.get("/object_info", timeout=120)
