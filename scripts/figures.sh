#!/usr/bin/env bash
# Regenerate every figure the docs show, from commands, into docs/figures/.
# Needs the main job's run (./scripts/demo.sh: runs/demo/run and data/synthetic) and, for the
# NYU comparison, ../shared/eval-data. Usage: ./scripts/figures.sh [RUN]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/demo/run}
H=".venv/bin/handgan"
PY=".venv/bin/python"
FIG=docs/figures
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
[ -f "$RUN/checkpoints/best.pt" ] || { echo "figures.sh: $RUN has no checkpoints/best.pt (run ./scripts/demo.sh first)" >&2; exit 2; }

# Data (docs/synthetic.md, README): training frames around the hand, whole scenes.
$H show-samples data/synthetic --split train --count 16 --out "$FIG/synthetic-samples.png"
$PY benchmarks/figure_full_scenes.py --out "$FIG/synthetic_full_frames.png"
$H synth --out "$TMP/scenes" --train 8 --test 0 --quiet
$H show-samples "$TMP/scenes" --count 6 --cols 3 --out "$FIG/synthetic_full_scenes.png"

# The main job's evaluation (docs/evaluation.md): the report's figures.
$H evaluate "$RUN" --out "$TMP/eval" --quiet
for f in success per_joint predictions generated frames; do
  cp "$TMP/eval/$f.png" "$FIG/quick-synthetic-$f.png"
done

# Published NYU methods compared (docs/evaluation.md).
E=../shared/eval-data
if [ -d "$E" ]; then
  $H compare --dataset nyu --gt "$E/groundtruth/nyu/nyu_test_groundtruth_label.txt" \
    DeepPrior="$E/results/nyu/CVWW15_NYU_Prior.txt" \
    DeepModel="$E/results/nyu/IJCAI16_NYU_DeepModel.txt" \
    DeepPrior++="$E/results/nyu/ICCVW17_NYU_DeepPrior++.txt" --out "$TMP/compare" > /dev/null
  cp "$TMP/compare/success.png" "$FIG/compare-nyu-success.png"
  cp "$TMP/compare/per_joint.png" "$FIG/compare-nyu-per-joint.png"
fi

# Inference (docs/inference.md): overlays of two whole test frames, and a generated strip.
$H predict "$RUN" data/synthetic/test/depth_1_0000001.png data/synthetic/test/depth_1_0000007.png \
  --out "$TMP/pred" --quiet
cp "$TMP/pred/depth_1_0000001.overlay.png" "$FIG/predict-overlay-1.png"
cp "$TMP/pred/depth_1_0000007.overlay.png" "$FIG/predict-overlay-7.png"
$H generate "$RUN/checkpoints/best.pt" --interpolate "$TMP/eval/groundtruth.txt:1" \
  "$TMP/eval/groundtruth.txt:68" --steps 8 --out "$TMP/gen" > /dev/null
cp "$TMP/gen/interpolation.png" "$FIG/generate-interpolation.png"
# A predicted 30-frame sequence with its true skeleton (docs/inference.md, "A sequence").
$PY scripts/sequence_figure.py "$RUN" --out "$TMP/seq" --frames 30 \
  --figure "$FIG/predict-sequence.png" > /dev/null

# The label study (docs/results.md): from the recorded rows.
$PY benchmarks/figure_label_study.py
echo "figures.sh: wrote the docs' figures into $FIG"
