#!/usr/bin/env bash
# Every GPU figure of docs/results.md (issue 16) on one H100/H200, meant to take under 6 minutes,
# as one log and one table: the training step alone (benchmarks/bench_train.py: both presets,
# both modes, batch 64 and 256, and the seed GAN compiled), `handgan train --preset seed` end to
# end with the host and the device data pipeline (its summary.json's labelled crops/s), and
# inference (benchmarks/bench_inference.py: one full frame with the learned localiser, a batch
# of frames, batched crops); first the tests that need CUDA.
#
#   PYTHONPATH=$PWD/src ./scripts/gpu-check.sh     # results in $RESULTS (default results-gpu-check/)
#   SMOKE=1 ./scripts/gpu-check.sh                  # the quick preset, a few steps: checks the wiring
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=${PYTHONPATH:-$PWD/src}
PY=${PY:-python3}
REPO=$PWD
WORK=${WORK:-/tmp/handgan-gpu-check}
RESULTS=${RESULTS:-results-gpu-check}
case "$RESULTS" in /*) ;; *) RESULTS=$REPO/$RESULTS ;; esac
mkdir -p "$WORK" "$RESULTS"
if [ -n "${SMOKE:-}" ]; then
  PRESET=quick; FRAMES=(--train 300 --test 20); E2E_STEPS=4; COMPILE=()
  BENCH=(--preset quick --steps 2 --warmup 1 --repeats 1); INFER=(--preset quick --frames 4 --warmup 1 --repeats 1)
else
  PRESET=seed; FRAMES=(--train 4000 --test 1000); E2E_STEPS=400; COMPILE=(--compile)
  BENCH=(--steps 200 --warmup 10 --repeats 3); INFER=(--preset seed --batch 256)
fi
LOG=$RESULTS/gpu-check.log
TABLE=$RESULTS/table.md
: > "$LOG"
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"
  date -u; echo "commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)"; } | tee -a "$LOG"
# The tests that need CUDA (the device pipeline's and the GPU crops' parity with the CPU path).
if $PY -c "import pytest" 2> /dev/null; then
  $PY -m pytest -q -rs -k "cuda or gpu" tests/test_device_augment.py tests/test_device_pipeline.py \
    tests/test_checkpoint.py 2>&1 | tail -n 4 | tee -a "$LOG"
else
  echo "pytest not installed: the CUDA tests were not run" | tee -a "$LOG"
fi
echo "| what | labelled crops/s |" > "$TABLE"
echo "|---|---|" >> "$TABLE"

# The step alone, on random crops in memory.
for batch in 64 256; do
  $PY benchmarks/bench_train.py --batch $batch "${BENCH[@]}" 2>&1 | tee -a "$LOG" \
    | sed -n "s/^\(.*\): *\([0-9.]*\) labelled crops\/s.*/| bench_train \1 | \2 |/p" >> "$TABLE"
done
# Where a GAN step still waits for the GPU (torch.cuda.set_sync_debug_mode), both presets.
$PY benchmarks/bench_train.py --mode gan --steps 1 --warmup 2 --repeats 1 --sync-debug 2>&1 \
  | tee -a "$LOG" | grep "host waits" || true
$PY benchmarks/bench_train.py --mode gan --batch 256 "${BENCH[@]}" "${COMPILE[@]}" 2>&1 \
  | tee -a "$LOG" | grep "^$PRESET" \
  | sed -n "s/^\(.*\): *\([0-9.]*\) labelled crops\/s.*/| bench_train \1 ${COMPILE[*]} | \2 |/p" >> "$TABLE"

# The real training loop, end to end (crops from the cache, augmentation, both networks).
cd "$WORK"
[ -f data/synthetic/test/joint_data.mat ] || $PY -m handgan synth --out data/synthetic \
  "${FRAMES[@]}" --seed 0 --workers "$(nproc)" --quiet >> "$LOG" 2>&1
for pipeline in host device; do
  for batch in 64 256; do
    out=e2e-$pipeline-$batch
    rm -rf "$out"
    $PY -m handgan train --out "$out" --preset $PRESET --quiet --max-steps $E2E_STEPS \
      --set optim.batch_size=$batch --set data.pipeline=$pipeline --set num_workers=8 \
      --set localizer.enabled=false --set sample_every_epochs=0 >> "$LOG" 2>&1
    $PY - "$out/summary.json" "$pipeline" "$batch" "$PRESET" >> "$TABLE" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"| handgan train --preset {sys.argv[4]} end to end, data.pipeline={sys.argv[2]}, batch "
      f"{sys.argv[3]} ({s['steps']} steps, {s['train_seconds']} s of loop, GPU memory "
      f"{s['gpu_memory_gb']} GB) | {s['crops_per_s']} |")
EOF
  done
done

# Inference.
cd "$REPO"
{ echo; echo "| inference (learned localiser) | one frame -> joints, median | frames at once | network alone |"
  echo "|---|---|---|---|"; } >> "$TABLE"
$PY benchmarks/bench_inference.py "${INFER[@]}" 2>&1 | tee -a "$LOG" | sed -n \
  's/^  \(.*\): one frame -> joints median \([0-9.]*\) ms.*; \([0-9]*\) frames at once: \([0-9]*\) frames\/s; network alone, batch [0-9]*: \([0-9]*\) crops\/s/| \1 | \2 ms | \4 frames\/s (\3 a batch) | \5 crops\/s |/p' \
  >> "$TABLE"
for f in "$WORK"/e2e-*/summary.json; do cp "$f" "$RESULTS/$(basename "$(dirname "$f")").json"; done
echo
cat "$TABLE"
