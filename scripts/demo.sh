#!/usr/bin/env bash
# The demo: train the default checkpoint if none exists, build the Flickr8k indexes if they are missing or bound to
# another checkpoint, then serve the API and the web page on http://127.0.0.1:8000 (Ctrl-C stops it).
set -euo pipefail
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/flickr8k}
RUNS=${RUNS:-runs}
INDEX=${INDEX:-indexes/flickr8k}
SPLITS=${SPLITS:-train,val,test}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
CKPT="$RUNS/grounded/best"  # the default model: grounded sparse terms (readable words)

if [ ! -f "$CKPT/checkpoint.json" ]; then
  if ! compgen -G "$DATA/dataset_*.json" > /dev/null || [ ! -d "$DATA/images" ]; then
    echo "demo: no trained checkpoint at $CKPT, and no Karpathy-format dataset at $DATA to train one." >&2
    echo "      Put Flickr8k there (dataset_flickr8k.json + images/) or run: make demo DATA=/path/to/dataset" >&2
    exit 2
  fi
  echo "== no checkpoint at $CKPT: training the default model on $DATA (feature cache, LiT base, grounded SKD)"
  train() {  # train METHOD DIR [args...]: keep a finished run, resume an interrupted one
    local method=$1 dir=$2; shift 2
    if [ -f "$dir/results.json" ]; then return; fi
    local resume=()
    [ -f "$dir/state.pt" ] && resume=(--resume)
    "$PY" -m training "$method" --data "$DATA" --run-dir "$dir" "${resume[@]}" "$@"
  }
  "$PY" -m training cache --data "$DATA"
  train align "$RUNS/align"
  train grounded "$RUNS/grounded" --set "init_checkpoint=$RUNS/align/best"
fi

if ! "$PY" -m indexer --log-level WARNING verify --index "$INDEX" --checkpoint "$CKPT" > /dev/null 2>&1; then
  echo "== building the indexes of $DATA ($SPLITS) into $INDEX"
  "$PY" -m indexer build --checkpoint "$CKPT" --data "$DATA" --splits "$SPLITS" --out "$INDEX"
fi

echo "== serving http://$HOST:$PORT/ (API docs: /docs, OpenAPI: /openapi.json)"
exec "$PY" -m service --index "$INDEX" --host "$HOST" --port "$PORT"
