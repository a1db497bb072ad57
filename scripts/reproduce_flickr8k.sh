#!/usr/bin/env bash
# Reproduce docs/results.md: feature cache, LiT base, SKD, baselines and ablations on Flickr8k, then the report.
# Each finished run (results.json present) is kept; an interrupted one resumes.
set -euo pipefail
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/flickr8k}
RUNS=${RUNS:-runs}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

run() {  # run METHOD DIR [extra args...]
  local method=$1 dir=$2; shift 2
  if [ -f "$dir/results.json" ]; then echo "== $method: $dir done"; return; fi
  local resume=()
  [ -f "$dir/state.pt" ] && resume=(--resume)
  echo "== $method -> $dir"
  "$PY" -m training "$method" --data "$DATA" --run-dir "$dir" "${resume[@]}" "$@"
}

"$PY" -m training cache --data "$DATA"
run align "$RUNS/align"
LIT=(--set "init_checkpoint=$RUNS/align/best")
run skd "$RUNS/skd" "${LIT[@]}"
run grounded "$RUNS/grounded" "${LIT[@]}"
run dense "$RUNS/dense" "${LIT[@]}"
run d2s "$RUNS/d2s" "${LIT[@]}"
run no_kd "$RUNS/no_kd" "${LIT[@]}"
run frozen_final "$RUNS/frozen_final" "${LIT[@]}"
DATA="$DATA" RUNS="$RUNS" PY="$PY" bash scripts/skd_variants.sh
DATA="$DATA" RUNS="$RUNS" PY="$PY" bash scripts/sparsity_sweep.sh
DATA="$DATA" RUNS="$RUNS" PY="$PY" bash scripts/grounding_sweep.sh
DATA="$DATA" RUNS="$RUNS" PY="$PY" bash scripts/word_sweep.sh
"$PY" -m training probe --data "$DATA" --output docs/readability-probe.json
"$PY" -m training probe --data "$DATA" --set model.sparse_head.vocabulary=words --set model.sparse_head.min_df=2 \
  --set model.sparse_head.inflections=merge --output docs/readability-probe-words.json
"$PY" -m training report --data "$DATA" --runs "$RUNS" --output docs/results.md
