# Sourced by the sweep scripts: PY, DATA and RUNS (defaults below), offline towers, and sweep_run DIR METHOD
# KEY=VALUE...: one training run of METHOD from the LiT base into DIR with these --set overrides; a finished run
# (results.json present) is kept.
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/flickr8k}
RUNS=${RUNS:-runs}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

sweep_run() {
  local dir=$1 method=$2; shift 2
  if [ -f "$dir/results.json" ]; then echo "== $(basename "$dir"): done"; return; fi
  local sets=()
  for kv in "$@"; do sets+=(--set "$kv"); done
  echo "== $(basename "$dir")"
  "$PY" -m training "$method" --data "$DATA" --run-dir "$dir" --overwrite --set "init_checkpoint=$RUNS/align/best" \
    "${sets[@]}"
}
