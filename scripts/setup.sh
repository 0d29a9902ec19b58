#!/usr/bin/env bash
# Create .venv (if missing) and install handgan with its test tools. Safe to rerun: it installs
# again only when pyproject.toml changed since the last install.
# torch is pinned to the CPU build 2.13.0 here: an unpinned torch pulls a multi-GB CUDA build.
# GPU users: install a CUDA torch first, then `pip install -e '.[dev]'` (any torch >= 2.1 works).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# pyrealsense2 (a dev dependency: the RealSense tests) links libusb-1.0, a system library.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
   ! ldconfig -p 2>/dev/null | grep -q 'libusb-1\.0\.so\.0'; then
  (timeout 120 apt-get update -qq && timeout 120 apt-get install -y -qq libusb-1.0-0 >/dev/null) || \
    echo "setup.sh: could not install libusb-1.0-0; the RealSense tests will be skipped" >&2
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
STAMP=.venv/.handgan-installed
WANT=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ] || \
   ! .venv/bin/python -c "import handgan, torch, pytest" >/dev/null 2>&1; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "torch==2.13.0" -e ".[dev]"
  echo "$WANT" > "$STAMP"
fi
