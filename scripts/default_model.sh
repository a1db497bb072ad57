# Sourced by the demos: train the default checkpoint ($CKPT, grounded sparse terms) on $DATA unless it exists.
# Needs PY, DATA, RUNS and CKPT set.
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

