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

# shellcheck source=scripts/default_model.sh
source "$(dirname "$0")/default_model.sh"

if ! "$PY" -m indexer --log-level WARNING verify --index "$INDEX" --checkpoint "$CKPT" > /dev/null 2>&1; then
  echo "== building the indexes of $DATA ($SPLITS) into $INDEX"
  "$PY" -m indexer build --checkpoint "$CKPT" --data "$DATA" --splits "$SPLITS" --out "$INDEX"
fi

echo "== serving http://$HOST:$PORT/ (API docs: /docs, OpenAPI: /openapi.json)"
exec "$PY" -m service --index "$INDEX" --host "$HOST" --port "$PORT"
