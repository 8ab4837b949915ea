# Developer entry points. `make test` is the command CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup lint test test-unit bench bench-full demo clean

$(BIN)/fleet-bridge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/fleet-bridge  ## virtualenv with the project and its dev tools

lint: setup  ## ruff, formatting, mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup  ## the whole suite (needs PostgreSQL and Mosquitto, see README)
	$(BIN)/pytest -n 2

test-unit: setup  ## pure logic only, no services
	$(BIN)/pytest -m unit

bench: setup  ## ingest drain vs ceilings and the seed's design, steady state (quick mode, ~5 min)
	$(BIN)/python -m bench.ingest --quick

bench-full: setup  ## the same with a 1,000,000-reading drain and 5 minutes of steady state
	$(BIN)/python -m bench.ingest --full

demo:  ## the whole pipeline: services, bridge, a simulated fleet of 10,000, the report vs the truth
	bash scripts/demo.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
