"""A minimal W3C WebDriver client (stdlib only) for Debian's chromium + chromedriver.

No browser or driver is ever downloaded: both come from the system packages."""
from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tools.comfy_host import free_port

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--window-size=1600,1000"]


def find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name) or (name if Path(name).exists() else None)
        if path:
            return path
    return None


class Browser:
    def __init__(self, chromium: str | None = None, driver: str | None = None):
        self.chromium = chromium or find("chromium", "/usr/bin/chromium", "chromium-browser")
        self.driver = driver or find("chromedriver", "/usr/bin/chromedriver")
        if not (self.chromium and self.driver):
            raise RuntimeError("chromium and chromedriver are needed (Debian: apt-get install chromium chromium-driver)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.profile = tempfile.mkdtemp(prefix="vinv-chromium-")
        self.proc = None
        self.session = None

    def __enter__(self) -> "Browser":
        self.proc = subprocess.Popen([self.driver, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            with contextlib.suppress(OSError, urllib.error.URLError):
                self._call("GET", "/status")
                break
            time.sleep(0.2)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": self.chromium, "args": CHROMIUM_FLAGS + [f"--user-data-dir={self.profile}"]}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(Exception):
            if self.session:
                self._call("DELETE", f"/session/{self.session}")
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float = 120):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read() or b"{}").get("value")
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"webdriver {method} {path}: {err.read().decode(errors='replace')[:2000]}") from err

    def get(self, url: str) -> None:
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def run(self, script: str, *args):
        """Run an async script: the last argument of the page function is the `done` callback."""
        wrapped = ("const done = arguments[arguments.length - 1];"
                   f"(async () => {{ {script} }})().then(done, e => done({{__error: String(e && e.stack || e)}}));")
        self._call("POST", f"/session/{self.session}/timeouts", {"script": 600000})
        value = self._call("POST", f"/session/{self.session}/execute/async", {"script": wrapped, "args": list(args)},
                           timeout=660)
        if isinstance(value, dict) and "__error" in value:
            raise RuntimeError(f"page script failed: {value['__error']}")
        return value

    def wait_for(self, expression: str, timeout: float = 120, interval: float = 0.5):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.run(f"return {expression};")
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"page condition not met in {timeout}s: {expression}")

    def close_dialogs(self) -> None:
        """Close the frontend's first-run dialogs (templates browser, tours) that may cover the canvas."""
        self.run("for (const d of document.querySelectorAll('[role=dialog], .p-dialog')) {"
                 " d.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape', code: 'Escape', bubbles: true}));"
                 " for (const x of d.querySelectorAll('button')) {"
                 "  const l = (x.getAttribute('aria-label') || '') + ' ' + (x.className || '');"
                 "  if (/close/i.test(l) || x.querySelector('.pi-times, .icon-\\[lucide--x\\]')) x.click(); } }"
                 "document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape', code: 'Escape', bubbles: true}));"
                 "return true;")

    def resize(self, width: int, height: int) -> None:
        self._call("POST", f"/session/{self.session}/window/rect", {"width": width, "height": height})

    def screenshot(self, path: Path) -> Path:
        png = self._call("GET", f"/session/{self.session}/screenshot")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(png))
        return path
