# LLM-Sentinel developer tasks. `make help` lists them.
#
# Everything runs from a virtualenv in .venv, created on first use by `make setup`.
# The stamp file .venv/.installed makes later runs a no-op until pyproject.toml changes.

PYTHON       ?= python3.11
VENV         ?= .venv
BIN          := $(VENV)/bin
STAMP        := $(VENV)/.installed
# Per-test limit (pytest-timeout); a hung test fails instead of hanging the run.
TEST_TIMEOUT ?= 120
PYTEST_ARGS  ?=
# Optional hook that starts/stops external services tests need (e.g. a broker).
TEST_SERVERS := tests/servers/run.sh
IMAGE        ?= llm-sentinel:dev

.DEFAULT_GOAL := help
.PHONY: help setup run demo test lint fmt image clean distclean

help:
	@echo "make setup      create $(VENV) and install the project with dev extras (fast when done)"
	@echo "make run        start the gateway with the embedded default config"
	@echo "make demo       start the gateway and feed it 90 s of LLM traffic with one anomaly of each type"
	@echo "make test       run the test suite (TEST_TIMEOUT=$(TEST_TIMEOUT)s per test, PYTEST_ARGS=...)"
	@echo "make lint       ruff check, ruff format --check, mypy"
	@echo "make fmt        sort imports and format the code with ruff"
	@echo "make image      build the container image $(IMAGE)"
	@echo "make clean      remove caches and build output (distclean also removes $(VENV))"

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

run: setup
	$(BIN)/sentinel run

# The gateway on its default config, fed by the synthetic traffic generator (60x speed, one anomaly
# of each type); alerts appear in the log, in sentinel-data/anomalies.jsonl and on the admin API.
demo: setup
	$(BIN)/python -m loadtests.demo

# Kernels are compiled into numba's cache first (once per checkout, then ~1 s), so no test's
# gateway start waits on LLVM. The servers hook runs only if present; its `stop` runs even when tests fail,
# and the recipe exits with pytest's status either way.
test: setup
	@status=0; \
	if [ -x "$(TEST_SERVERS)" ]; then "$(TEST_SERVERS)" start || exit $$?; fi; \
	$(BIN)/sentinel warm-up || status=$$?; \
	[ $$status -ne 0 ] || $(BIN)/python -m pytest -q --timeout=$(TEST_TIMEOUT) $(PYTEST_ARGS) || status=$$?; \
	if [ -x "$(TEST_SERVERS)" ]; then "$(TEST_SERVERS)" stop || true; fi; \
	exit $$status

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: setup
	$(BIN)/ruff check --select I --fix .
	$(BIN)/ruff format .

image:
	docker build -t $(IMAGE) .

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
