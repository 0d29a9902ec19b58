#!/usr/bin/env bash
# Quickstart command 1: set up, then the main job on the synthetic default:
# train the `quick` preset, evaluate it on the synthetic test split, write the report.
# Rerunning continues (or just re-evaluates) the same run instead of starting over.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
OUT=${OUT:-runs/demo}
if [ -f "$OUT/run/checkpoints/last.pt" ]; then
  .venv/bin/handgan train --out "$OUT/run" --resume
else
  .venv/bin/handgan train --out "$OUT/run" --preset quick   # generates data/synthetic on first use
fi
.venv/bin/handgan evaluate "$OUT/run" --out "$OUT/eval"
.venv/bin/handgan show-samples data/synthetic --split test --count 16 --out "$OUT/eval/data-samples.png"
