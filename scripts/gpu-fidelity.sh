#!/usr/bin/env bash
# Generator fidelity from reconstruction alone, per generator choice and labelled share
# (benchmarks/bench_generator_fidelity.py, quick preset, 64 px): what limits Gen(J)?
# A reference pose network (supervised, all labels, cosine, 20 epochs) reads Gen(J_test) back.
#   PYTHONPATH=$PWD/src RESULTS=/some/dir ./scripts/gpu-fidelity.sh     # ~3 min on one H200
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=${PYTHONPATH:-$PWD/src} OMP_NUM_THREADS=1
PY=${PY:-python3}
REPO=$PWD
WORK=${WORK:-/tmp/handgan-gpu-fidelity}
RESULTS=${RESULTS:-results-fidelity}
case "$RESULTS" in /*) ;; *) RESULTS=$REPO/$RESULTS ;; esac
STEPS=${STEPS:-1180}
EPOCHS=${EPOCHS:-20}
mkdir -p "$WORK" "$RESULTS"
cd "$WORK"
if [ ! -f data/synthetic/test/joint_data.mat ]; then
  $PY -m handgan synth --out data/synthetic --train 4000 --test 1000 --seed 0 --workers "$(nproc)" --quiet
fi
$PY -m handgan train --out ref --preset quick --mode supervised --quiet \
  --set optim.lr_schedule=cosine --set optim.epochs=$EPOCHS ${REF_STEPS:+--max-steps $REF_STEPS} > ref.log 2>&1
B="$REPO/benchmarks/bench_generator_fidelity.py"
P="--set loss.recons_mode=pixel_sum --set loss.tau=1"
H="--set loss.w_hand=5"
K="--set model.gen_skeleton=true"
cp ref/summary.json "$RESULTS/ref-summary.json" 2>/dev/null
# Each line lands in $RESULTS as soon as its generator is measured (a time-out keeps the rest).
run() { name=$1; shift; $PY "$B" --reference ref --name "$name" "$@" >> "$RESULTS/fidelity.jsonl" 2> "$RESULTS/$name.err"; }
: > "$RESULTS/fidelity.jsonl"
run fc-f0.1 --labeled-fraction 0.1 --steps $STEPS $P &
run fc-hand-f0.1 --labeled-fraction 0.1 --steps $STEPS $P $H &
run skel-hand-f0.1 --labeled-fraction 0.1 --steps $STEPS $P $H $K &
run fc-f1 --labeled-fraction 1.0 --steps $STEPS $P &
run skel-hand-f1 --labeled-fraction 1.0 --steps $STEPS $P $H $K &
run skel-hand-f0.1-x3 --labeled-fraction 0.1 --steps $((3 * STEPS)) $P $H $K &
run skel-hand-f1-x3 --labeled-fraction 1.0 --steps $((3 * STEPS)) $P $H $K &
run seedloss-f1 --labeled-fraction 1.0 --steps $STEPS &
wait
cp ref.log "$RESULTS/" 2>/dev/null
cat "$RESULTS/fidelity.jsonl"
