#!/usr/bin/env bash
# The generator issue's seed-preset comparison (128 px, width 64, 20 epochs, one seed): the
# preset's rendered-generator line against supervised-few (the same recipe without the generator) at
# 5 % and 10 % labels, every run trained side by side on one GPU (`handgan study labels --jobs`).
# Results in $RESULTS (default results-gpu-study/): study.json, table.md, each run's summary.json
# and config.yaml, the GPU's name.
#
#   PYTHONPATH=$PWD/src ./scripts/gpu-study.sh       # meant to take < 8 min on one H100/H200
#   SMOKE=1 ./scripts/gpu-study.sh                    # 3 steps per run: checks the wiring
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=${PYTHONPATH:-$PWD/src} OMP_NUM_THREADS=1
PY=${PY:-python3}
REPO=$PWD
WORK=${WORK:-/tmp/handgan-gpu-seed-study}
RESULTS=${RESULTS:-results-gpu-study}
BUDGET=${BUDGET:-420}           # seconds for the study; unfinished runs are left out
case "$RESULTS" in /*) ;; *) RESULTS=$REPO/$RESULTS ;; esac
mkdir -p "$WORK" "$RESULTS"
cd "$WORK"
EXTRA=()
if [ -n "${SMOKE:-}" ]; then EXTRA=(--max-steps 3); fi
started=$(date +%s)
if [ ! -f data/synthetic/test/joint_data.mat ]; then
  $PY -m handgan synth --out data/synthetic --train 4000 --test 1000 --seed 0 --workers "$(nproc)" --quiet
fi
# Build the 128 px crop caches once, before the parallel runs open them.
$PY -m handgan train --out warm --preset seed --max-steps 1 --set optim.epochs=1 >/dev/null 2>&1

# The seed preset is the method (docs/training.md); supervised-few is the same recipe without
# the generator.
timeout "$BUDGET" $PY -m handgan study labels --out seed-study --preset seed --quiet --seeds 1 \
  --epochs 20 --fractions 0.05,0.1 --modes "" --jobs 6 "${EXTRA[@]}" \
  --variant "supervised-few=supervised:optim.lr_schedule=cosine" \
  --variant "gan-sensor=gan:optim.lr_schedule=cosine" > seed-study.log 2>&1

cp seed-study/study.json seed-study/table.md seed-study.log "$RESULTS/" 2>/dev/null
for run in seed-study/runs/*; do
  [ -f "$run/summary.json" ] || continue
  mkdir -p "$RESULTS/$run"
  cp "$run/summary.json" "$run/config.yaml" "$RESULTS/$run/"
done
nvidia-smi --query-gpu=name --format=csv,noheader > "$RESULTS/gpu.txt" 2>/dev/null
echo "elapsed $(( $(date +%s) - started )) s"
cat "$RESULTS/table.md" 2>/dev/null
