#!/usr/bin/env bash
# Quickstart command 2: set up, then run the test suite (extra pytest arguments pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
