#!/usr/bin/env bash
# The demo: train the default checkpoint if none exists, build the Flickr8k indexes if they are missing, bound to
# another checkpoint or without payload indexes, then serve the API and the web page on http://127.0.0.1:8000 (Ctrl-C stops it).
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

# rebuilt too when it predates payload indexes (the page's filters need the photos' fields)
if ! report=$("$PY" -m indexer --log-level WARNING verify --index "$INDEX" --checkpoint "$CKPT" 2> /dev/null) \
    || ! grep -q '"payload_fields": [1-9]' <<< "$report"; then
  echo "== building the indexes of $DATA ($SPLITS) into $INDEX"
  "$PY" -m indexer build --checkpoint "$CKPT" --data "$DATA" --splits "$SPLITS" --out "$INDEX"
fi

echo "== serving http://$HOST:$PORT/ (API docs: /docs, OpenAPI: /openapi.json)"
SERVE=("$PY" -m service --index "$INDEX" --host "$HOST" --port "$PORT")
# Ctrl-C in a terminal sends SIGINT to the whole foreground process group, make included, and GNU make then ends
# with "Interrupt" (status 130) even though the service drains and exits 0. So when this script holds the terminal's
# foreground, the service runs as a job of its own process group that takes the foreground (bash job control): Ctrl-C
# reaches the service alone, and make gets its exit status. A script's bash hands the terminal over through stderr,
# hence -t 2. Otherwise (CI, nohup, a pipe, a background job of the shell) the plain exec.
read -r -a stat < /proc/$$/stat 2> /dev/null || stat=()
if [ -t 0 ] && [ -t 2 ] && [ "${#stat[@]}" -gt 7 ] && [ "${stat[4]}" = "${stat[7]}" ]; then  # pgrp = tty's fg pgrp
  set -m
  # Ctrl-Z is ignored: a script's bash abandons a stopped foreground job (and make with it) instead of suspending
  trap '' TSTP
  "${SERVE[@]}" &
  fg > /dev/null  # the service's exit status; bash takes the terminal back afterwards
  exit
fi
exec "${SERVE[@]}"
