#!/usr/bin/env bash
# The official code's quirks as options, each one SKD run on val (docs/results.md, "Official-code options").
set -euo pipefail
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/flickr8k}
RUNS=${RUNS:-runs}
# The default (detach, transposed, regulariser stepped on training batches only) is runs/skd itself.
for variant in "loss.teacher_grad=through" "loss.t2i_teacher=untransposed" "loss.reg_counts_validation_batches=true"; do
  dir="$RUNS/variants/${variant//[=.]/_}"
  [ -f "$dir/results.json" ] && continue
  "$PY" -m training skd --data "$DATA" --run-dir "$dir" --overwrite --set "init_checkpoint=$RUNS/align/best" \
    --set "$variant"
done
