#!/usr/bin/env bash
# Quickstart command 1: set up, then the main job on the synthetic default (whole-frame scenes):
# train the hand localiser and the `quick` preset, evaluate on the synthetic test split (crops
# centred on the labelled palm, and on the full frames where the localiser finds the hand),
# write the report.
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
