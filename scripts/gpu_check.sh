#!/usr/bin/env bash
# The GPU measurements as one command on a lent GPU machine (device tool: carry .whl, made by scripts/gpu_wheels.sh):
#   bash scripts/gpu_check.sh
# installs the carried wheels into a scratch folder, then runs the encoding/training benchmark on the GPU; its
# report lands in $OUT/gpu (README.md, report.json) with the GPU's name and the log beside it.
set -euo pipefail
OUT=${OUT:-artifacts/gpu-check}
WORK=${WORK:-/tmp/duet-gpu}
mkdir -p "$OUT"
SITE=$(mktemp -d)
python3 -m pip install --quiet --no-index --no-deps --target "$SITE" .whl/*.whl
export PYTHONPATH="$SITE:$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
python3 -m benchmarks.gpu --out "$OUT/gpu" --work "$WORK" "$@" 2>&1 | tee "$OUT/gpu.log"
