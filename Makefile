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
EPISODES ?= 10
SEED ?= 0

export PYTHONUNBUFFERED := 1
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_CLI_PROMPT := false

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c requirements.lock -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/maniflow generate --out $(DATA) --episodes $(EPISODES) --seed $(SEED) --workers 2
	$(BIN)/maniflow extract --root $(DATA) --work $(WORK) --workers 2
	$(BIN)/maniflow inspect $(WORK)/frames/cluttered/beat_block_hammer.zarr

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_extract.py

clean:
	rm -rf $(DATA) $(WORK) .prefect
