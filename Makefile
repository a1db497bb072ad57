# Duet: common tasks. Everything runs in the project's own virtual environment (.venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/flickr8k
RUNS ?= runs

.PHONY: setup browser test demo demo-ray results variants sparsity benchmarks check-benchmarks

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade "pip>=24"
	# torch and torchvision pinned together; pip takes both from this machine's disk
	$(VENV)/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# Debian's headless Chromium and its driver, for the web page test (installed once, as root).
browser:
	@command -v chromium > /dev/null && command -v chromedriver > /dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

# The main job: train the default checkpoint if none exists, build the Flickr8k indexes, serve on 127.0.0.1:8000.
demo: setup
	DATA=$(DATA) RUNS=$(RUNS) PY=$(PY) bash scripts/demo.sh

# The demo on Ray: a local 2-node cluster (loopback-only namespace, as root), the collection sharded and built with
# Ray Data, served by Ray Serve on 127.0.0.1:8000. On a real cluster: README "Scale-out on Ray".
demo-ray: setup
	DATA=$(DATA) RUNS=$(RUNS) PY=$(PY) bash scripts/demo_ray.sh

# The test command (README, CI): offline, CPU, tiny models and generated data. Whole test files run on
# TEST_PROCESSES processes (pytest-xdist), in tests/conftest.py's order: most tests wait on what they start. Then
# the tests that load the machine to its measured capacity (marker alone) run by themselves.
TEST_PROCESSES ?= 2
test: setup browser
	$(VENV)/bin/ruff check core training indexer service benchmarks tests
	$(PY) -m mypy core indexer service
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -m "not slow and not alone" \
		-n $(TEST_PROCESSES) --dist loadfile --no-loadscope-reorder
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -m "alone and not slow"

# Reproduce docs/results.md on Flickr8k (feature cache, LiT base, SKD, baselines, ablations, report).
results: setup
	DATA=$(DATA) RUNS=$(RUNS) PY=$(PY) bash scripts/reproduce_flickr8k.sh

# The official code's options (teacher gradient, t2i teacher, regulariser stepping), one SKD run each.
variants: setup
	DATA=$(DATA) RUNS=$(RUNS) PY=$(PY) bash scripts/skd_variants.sh

# SKD with stronger sparsity regularisation.
sparsity: setup
	DATA=$(DATA) RUNS=$(RUNS) PY=$(PY) bash scripts/sparsity_sweep.sh

# The Flickr8k benchmark report (quality, sweeps, efficiency, peers, 10k/100k/1M synthetic scale) of a checkpoint:
# about an hour on 2 cores for the grounded model (3 hours for the latent skd one). BENCH_ARGS=--resume continues an interrupted run.
CHECKPOINT ?= $(RUNS)/grounded/best
SCALES ?= 10000,100000,1000000
KNOB_SCALES ?= 100000,1000000
benchmarks: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m benchmarks run --checkpoint $(CHECKPOINT) --data $(DATA) \
		--out docs/benchmarks/flickr8k-test --scales $(SCALES) --knob-scales $(KNOB_SCALES) $(BENCH_ARGS)

# Re-run the results matrix's conditions: OK/FAIL per row.
check-benchmarks: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m benchmarks check --matrix benchmarks/matrix/flickr8k-test.json \
		--checkpoint $(CHECKPOINT) --data $(DATA)
