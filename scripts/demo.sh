#!/usr/bin/env bash
# Quickstart command 1: set up, then run the main job on the synthetic default.
# Today: generate the synthetic dataset and draw a grid of samples with their skeletons.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
OUT=${OUT:-runs/demo}
.venv/bin/handgan synth --out "$OUT/data" --train 2000 --test 500 --seed 0 --overwrite
.venv/bin/handgan show-samples "$OUT/data" --split train --count 16 --out "$OUT/samples.png"
