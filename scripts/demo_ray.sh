#!/usr/bin/env bash
# The demo on Ray: train the default checkpoint if none exists, then a 2-node Ray cluster on this machine (inside a
# loopback-only network namespace; needs root), the sharded Flickr8k collection built on it with Ray Data (unless it
# is there and current), served by Ray Serve (2 shards x 2 replicas) on http://127.0.0.1:8000 (Ctrl-C stops it all).
set -euo pipefail
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/flickr8k}
RUNS=${RUNS:-runs}
INDEX=${INDEX:-indexes/flickr8k-sharded}
SPLITS=${SPLITS:-train,val,test}
PORT=${PORT:-8000}
SHARDS=${SHARDS:-2}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
CKPT="$RUNS/grounded/best"

# shellcheck source=scripts/default_model.sh
source "$(dirname "$0")/default_model.sh"

exec "$PY" -m service.local_ray --checkpoint "$CKPT" --data "$DATA" --splits "$SPLITS" --out "$INDEX" \
  --shards "$SHARDS" --port "$PORT"
