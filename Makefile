# Developer entry points. `make test` is the command CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup lint test test-clock test-unit bench bench-full demo clean

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

# The date-sensitive tests (marker `clock`) run again with bridge.clock moved: 400 days
# ahead, a day back, the end of a leap day and of a year. A test that mixes fixed
# dates with "today", or a clock read around bridge.clock, fails on one of them.
CLOCK_DATES := $$(date -u -d '+400 days' +%FT%TZ) $$(date -u -d '-1 day' +%FT%TZ) 2028-02-29T21:00:00Z 2027-12-31T22:30:00Z

test: setup  ## the whole suite, then the date-sensitive tests at far dates (needs PostgreSQL and Mosquitto, see README)
	$(BIN)/pytest -n 2
	$(MAKE) --no-print-directory test-clock

test-clock: setup  ## the date-sensitive tests with the clock moved to far dates
	@for at in $(CLOCK_DATES); do \
		echo "== date-sensitive tests with FLEET_BRIDGE_TEST_CLOCK=$$at"; \
		FLEET_BRIDGE_TEST_CLOCK=$$at $(BIN)/pytest -n 2 -q -m clock || exit 1; \
	done

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
