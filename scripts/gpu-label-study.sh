#!/usr/bin/env bash
# The generator issue's label study (quick preset, 20 epochs, 2 seeds) on one GPU machine with
# many cores: every line at 5 % and 10 % labels (then 1 %), runs trained side by side
# (`handgan study labels --jobs`), then the generators' fidelity (benchmarks/
# bench_generator_fidelity.py). Results: $RESULTS (default results-gpu/): each study's
# study.json and table.md, every run's summary.json and config.yaml, fidelity.jsonl.
#
#   PYTHONPATH=$PWD/src ./scripts/gpu-label-study.sh          # ~9 min on one H200 + 16 cores
#   SMOKE=1 ./scripts/gpu-label-study.sh                       # 3 steps per run: checks the wiring
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=${PYTHONPATH:-$PWD/src} OMP_NUM_THREADS=1
PY=${PY:-python3}
WORK=${WORK:-/tmp/handgan-gpu-study}
RESULTS=${RESULTS:-results-gpu}
BUDGET=${BUDGET:-480}           # seconds for the studies; unfinished runs are left out
REPO=$PWD
case "$RESULTS" in /*) ;; *) RESULTS=$REPO/$RESULTS ;; esac   # absolute or repo-relative
mkdir -p "$WORK" "$RESULTS"
cd "$WORK"
EPOCHS=20
EXTRA=()
if [ -n "${SMOKE:-}" ]; then EXTRA=(--max-steps 3); fi

if [ ! -f data/synthetic/test/joint_data.mat ]; then
  $PY -m handgan synth --out data/synthetic --train 4000 --test 1000 --seed 0 --workers "$(nproc)" --quiet
fi
# Build the 64 px crop caches once, before the parallel runs open them.
$PY -m handgan train --out warm --preset quick --max-steps 1 --set optim.epochs=1 >/dev/null 2>&1

F=optim.lr_schedule=cosine,loss.w_equivariance=2,loss.equi_rotation_deg=45    # configs/few-labels.yaml
G=loss.recons_mode=pixel_sum,loss.tau=1,loss.w_hand=5,model.gen_skeleton=true,loss.gen_warmup_epochs=2
S=loss.w_synth=1
U=loss.synth_poses=mix+finger+rotate+unlabeled
LINES=(--variant "gan-faithful=gan:$F,$G"
       --variant "gan-synth=gan:$F,$G,$S"
       --variant "gan-synth-u=gan:$F,$G,$S,$U"
       --variant "gan-synth-u-fm=gan:$F,$G,$S,$U,loss.gen_adv=feature_matching"
       --variant "gan-synth-u-gate=gan:$F,$G,$S,$U,loss.synth_gate=3")
study() { timeout "$BUDGET" $PY -m handgan study labels --quiet --seeds 2 --epochs $EPOCHS "${EXTRA[@]}" --modes "" "$@"; }
started=$(date +%s)
study --out base --fractions 0.01,0.05,0.1,1.0 --jobs 3 --variant supervised-cos=supervised:optim.lr_schedule=cosine > base.log 2>&1 &
study --out few --fractions 0.01,0.05,0.1 --jobs 2 --variant supervised-few=supervised:$F > few.log 2>&1 &
study --out gen --fractions 0.05,0.1 --jobs 10 "${LINES[@]}" > gen.log 2>&1
BUDGET=$((BUDGET - $(date +%s) + started)); [ "$BUDGET" -lt 10 ] && BUDGET=10
study --out gen1 --fractions 0.01 --jobs 10 "${LINES[@]}" > gen1.log 2>&1
wait

# Fidelity: each generator-using run at 10 % read back by the all-label supervised-cos run.
REF=base/runs/supervised-cos-f1-s0
: > fidelity.jsonl
if [ -f "$REF/summary.json" ]; then
  for run in gen/runs/*-f0.1-s*; do
    [ -f "$run/summary.json" ] && $PY "$REPO/benchmarks/bench_generator_fidelity.py" --run "$run" --reference "$REF" --name "$run" >> fidelity.jsonl 2>/dev/null &
  done
  wait
fi

for f in base few gen gen1; do
  mkdir -p "$RESULTS/$f"
  cp "$f"/study.json "$f"/table.md "$f".log "$RESULTS/$f/" 2>/dev/null
  for run in "$f"/runs/*; do
    [ -f "$run/summary.json" ] || continue
    mkdir -p "$RESULTS/$run"
    cp "$run/summary.json" "$run/config.yaml" "$RESULTS/$run/"
    cp "$run"/samples/epoch_020.png "$RESULTS/$run/" 2>/dev/null
  done
done
cp fidelity.jsonl "$RESULTS/"
nvidia-smi --query-gpu=name --format=csv,noheader > "$RESULTS/gpu.txt" 2>/dev/null
echo "elapsed $(( $(date +%s) - started )) s"
