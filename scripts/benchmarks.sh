#!/usr/bin/env bash
# The earlier single measurements of docs/benchmarks/earlier/ (the full report is `make benchmarks`): quality, latency, size and HTTP overhead on the Flickr8k test indexes
# (default SKD model and the FLOPs-regularised variant), and synthetic corpora of 100k and 1M items.
# Needs indexes/flickr8k-test and indexes/flickr8k-test-flops (python -m indexer build ... --splits test).
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/benchmarks/earlier}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$OUT"
step() { local out=$1; shift; [ -f "$out" ] && { echo "== $out exists"; return; }; echo "== $out"; "$PY" -m benchmarks "$@" --output "$out"; }
step "$OUT/flickr8k-test.json" search --index indexes/flickr8k-test --http
step "$OUT/flickr8k-test-flops.json" search --index indexes/flickr8k-test-flops
step "$OUT/synthetic-100k.json" synthetic --index indexes/flickr8k-test --items 100000
step "$OUT/synthetic-100k-flops.json" synthetic --index indexes/flickr8k-test-flops --items 100000
step "$OUT/synthetic-1m-flops.json" synthetic --index indexes/flickr8k-test-flops --items 1000000 --queries 50
step "$OUT/synthetic-1m.json" synthetic --index indexes/flickr8k-test --items 1000000 --queries 50
"$PY" -m benchmarks report --search "$OUT/flickr8k-test.json" "$OUT/flickr8k-test-flops.json" --synthetic "$OUT"/synthetic-*.json \
  --output "$OUT/README.md"
