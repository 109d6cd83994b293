# Two commands on a fresh machine: `make demo` and `make test`. Both build the
# project-local virtual environment (.venv) from requirements.lock first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Where the demo writes: embedded synthetic RoboTwin episodes, then the pipeline's stores.
DATA ?= data/robotwin
WORK ?= work
EPISODES ?= 30
SEED ?= 0

export PYTHONUNBUFFERED := 1
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_CLI_PROMPT := false

.PHONY: setup up down demo demo-cli demo-vlm-paths test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c requirements.lock -e ".[test]"
	touch $(STAMP)

# The local Prefect stack (server, pools, deployments, workers), all under .prefect/.
up: $(STAMP)
	deployments/stack.sh up

down:
	deployments/stack.sh down

# The main job as the user runs it: `prefect deployment run train-matrix/demo` on the stack,
# paths over HTTP from four loopback HAMSTER-protocol servers (ports 8100-8103, the demo
# deployment's endpoints) that answer from the oracle.
demo: up
	$(BIN)/maniflow generate --out $(DATA) --episodes $(EPISODES) --seed $(SEED) --workers 2
	$(BIN)/maniflow extract --root $(DATA) --work $(WORK) --workers 2 --tasks click_bell
	@ready=$(WORK)/.serve-paths.json; rm -f $$ready; \
	$(BIN)/maniflow serve-paths --work $(WORK) --ports 8100,8101,8102,8103 --ready-file $$ready & \
	pid=$$!; trap "kill $$pid 2>/dev/null" EXIT; \
	while [ ! -f $$ready ]; do kill -0 $$pid 2>/dev/null || exit 1; sleep 0.2; done; \
	$(BIN)/python deployments/run.py train-matrix/demo \
	  --param 'params={"work": "$(CURDIR)/$(WORK)", "root": "$(CURDIR)/$(DATA)"}'
	@echo "report: $(WORK)/reports/demo/report.md"
	@echo "Prefect UI: http://127.0.0.1:$${PREFECT_PORT:-4200} (make down stops the stack)"

# The same stages without Prefect, one CLI command each.
demo-cli: $(STAMP)
	$(BIN)/maniflow generate --out $(DATA) --episodes $(EPISODES) --seed $(SEED) --workers 2
	$(BIN)/maniflow extract --root $(DATA) --work $(WORK) --workers 2
	$(BIN)/maniflow inspect $(WORK)/frames/cluttered/beat_block_hammer.zarr
	$(BIN)/maniflow paths --provider oracle --work $(WORK)
	$(MAKE) --no-print-directory demo-vlm-paths
	$(BIN)/maniflow inspect $(WORK)/paths/hamster/cluttered/open_microwave
	$(BIN)/maniflow render --work $(WORK) --label hamster --workers 2
	$(BIN)/maniflow inspect $(WORK)/datasets/cluttered_overlay_open_microwave.zarr
	$(BIN)/maniflow train --work $(WORK) --env cluttered --task click_bell --condition overlay_initial_current --preset demo
	$(BIN)/maniflow evaluate --work $(WORK) --preset demo --episodes 10

# Path labelling over real HTTP: four loopback servers speaking the HAMSTER protocol (answers
# from the oracle, VLM_LATENCY seconds each, one request at a time), as four GPUs would serve.
VLM_LATENCY ?= 0
demo-vlm-paths: $(STAMP)
	@ready=$(WORK)/.serve-paths.json; rm -f $$ready; \
	$(BIN)/maniflow serve-paths --work $(WORK) --ports 0,0,0,0 --latency $(VLM_LATENCY) --ready-file $$ready & \
	pid=$$!; trap "kill $$pid 2>/dev/null" EXIT; \
	while [ ! -f $$ready ]; do kill -0 $$pid 2>/dev/null || exit 1; sleep 0.2; done; \
	endpoints=$$($(BIN)/python -c "import json,sys; print(','.join(json.load(open(sys.argv[1]))['urls']))" $$ready); \
	$(BIN)/maniflow paths --provider hamster --work $(WORK) --endpoints $$endpoints

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_extract.py
	$(BIN)/python benchmarks/bench_paths.py
	$(BIN)/python benchmarks/bench_datasets.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_eval.py

clean: down
	rm -rf $(DATA) $(WORK) .prefect
