"""The switch that points the host and browser tests at another ComfyUI (tools/comfy_host.py)."""
import pytest

from tools import comfy_host


def test_the_pypi_build_unless_a_tree_is_named(monkeypatch, tmp_path):
    monkeypatch.delenv(comfy_host.COMFYUI_ENV, raising=False)
    host = comfy_host.configured(tmp_path / "host")
    assert type(host) is comfy_host.Host and host.comfy == (tmp_path / "host" / "comfyui").resolve()


def test_a_named_tree_with_its_python(monkeypatch, tmp_path):
    tree, python = tmp_path / "ComfyUI", tmp_path / "venv" / "bin" / "python"
    tree.mkdir()
    (tree / "main.py").write_text("")
    python.parent.mkdir(parents=True)
    python.write_text("")
    monkeypatch.setenv(comfy_host.COMFYUI_ENV, str(tree))
    monkeypatch.setenv(comfy_host.PYTHON_ENV, str(python))
    host = comfy_host.configured(tmp_path / "unused").build()
    assert isinstance(host, comfy_host.ExistingHost) and host.comfy == tree.resolve() and host.python == python
    assert not (tmp_path / "unused").exists()  # nothing built


def test_the_trees_own_venv_is_the_default_python(monkeypatch, tmp_path):
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").write_text("")
    (tmp_path / "main.py").write_text("")
    monkeypatch.setenv(comfy_host.COMFYUI_ENV, str(tmp_path))
    monkeypatch.delenv(comfy_host.PYTHON_ENV, raising=False)
    assert comfy_host.configured().build().python == tmp_path / "venv" / "bin" / "python"


def test_a_tree_without_python_says_how_to_make_one(monkeypatch, tmp_path):
    (tmp_path / "main.py").write_text("")
    monkeypatch.setenv(comfy_host.COMFYUI_ENV, str(tmp_path))
    monkeypatch.delenv(comfy_host.PYTHON_ENV, raising=False)
    with pytest.raises(RuntimeError, match="comfy_host.py venv --comfyui"):
        comfy_host.configured().build()


def history_entry(status: str) -> dict:
    prompt = {"1": {"class_type": "Load", "inputs": {"x": 1}},
              "2": {"class_type": "Work", "inputs": {"model": ["1", 0], "text": "a"}},
              "3": {"class_type": "Save", "inputs": {"samples": ["2", 0]}},
              "4": {"class_type": "Unused", "inputs": {"model": ["1", 0]}}}
    return {"prompt": [0, "id", prompt, {}, ["3"]], "status": {"status_str": status}}


def test_executed_node_types_follow_the_outputs_of_a_successful_prompt():
    assert comfy_host.executed_node_types(history_entry("success")) == {"Load", "Work", "Save"}
    assert comfy_host.executed_node_types(history_entry("error")) == set()
