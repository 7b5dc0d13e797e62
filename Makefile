# qnet — the two commands users need are `make run-scenario` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SCENARIO ?= scenarios/quickstart.toml
ARGS ?=

.PHONY: install run-scenario test bench fuzz lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run-scenario: $(STAMP)
	$(BIN)/qnet run $(SCENARIO) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench

fuzz: $(STAMP)
	$(BIN)/python -m bench fuzz_daemon fuzz_transport

lint: $(STAMP)
	$(BIN)/ruff check emulator nodes tests bench

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
