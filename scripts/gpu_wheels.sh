#!/usr/bin/env bash
# The wheels a lent GPU machine lacks for the encoding and training paths (it has torch, torchvision, numpy, pillow,
# safetensors, tqdm, regex, transformers): downloaded here into .whl/ (git-ignored) to travel with the checkout.
# The versions are this project's (its virtual environment); Python 3.12 wheels, as the GPU machine runs 3.12.
set -euo pipefail
PY=${PY:-.venv/bin/python}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --dest .whl \
  "open_clip_torch==$(version open_clip_torch)" "ftfy==$(version ftfy)" "wcwidth==$(version wcwidth)" \
  "pydantic==$(version pydantic)" "pydantic-core==$(version pydantic_core)" \
  "annotated-types==$(version annotated-types)" "typing-inspection==$(version typing-inspection)" \
  "typing-extensions==$(version typing_extensions)"
ls -la .whl
