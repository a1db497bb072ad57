#!/usr/bin/env bash
# SKD with stronger L1 sparsity (text eta, image eta); docs/results.md "Sparsity regulariser sweep".
set -euo pipefail
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/flickr8k}
RUNS=${RUNS:-runs}
for eta in "1e-3 2e-4" "3e-3 6e-4"; do
  set -- $eta
  dir="$RUNS/sparsity/eta_$1"
  [ -f "$dir/results.json" ] && continue
  "$PY" -m training skd --data "$DATA" --run-dir "$dir" --overwrite --set "init_checkpoint=$RUNS/align/best" \
    --set "loss.eta_text=$1" --set "loss.eta_image=$2"
done
# The official teacher (gradient through the teacher) at the stronger sparsity
dir="$RUNS/sparsity/through_eta_1e-3"
[ -f "$dir/results.json" ] || "$PY" -m training skd --data "$DATA" --run-dir "$dir" --overwrite \
  --set "init_checkpoint=$RUNS/align/best" --set loss.teacher_grad=through --set loss.eta_text=1e-3 --set loss.eta_image=2e-4
# The FLOPs regulariser (penalises terms active in many items: shorter posting lists for Lucene)
for eta in 1e-2 1e-1; do
  dir="$RUNS/sparsity/flops_$eta"
  [ -f "$dir/results.json" ] && continue
  "$PY" -m training skd --data "$DATA" --run-dir "$dir" --overwrite --set "init_checkpoint=$RUNS/align/best" \
    --set loss.regularizer=flops --set "loss.eta_text=$eta" --set "loss.eta_image=$eta"
done
