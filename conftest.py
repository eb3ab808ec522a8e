"""The pack's root is a ComfyUI package with relative imports that ComfyUI loads under whatever
name its folder has (often hyphenated: ComfyUI-Exact-Video-Inversion), never a test package.
pytest would import its __init__.py as the tests' parent package and fail on such a folder
name, so the root is collected as a plain directory (tests load the pack as ComfyUI does, with
`tests.conftest.load_pack`). The hook is registered as a plugin of its own: a conftest's hooks
do not apply to the directory that holds it."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent


class PackRootIsNotATestPackage:
    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if Path(path).resolve() == ROOT:
            return pytest.Dir.from_parent(parent, path=Path(path))
        return None


def pytest_configure(config):
    config.pluginmanager.register(PackRootIsNotATestPackage(), "vidinv-pack-root")
