# The two promises of the README: `make demo` and `make test`, each from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR ?= .irisgate

.PHONY: venv lint typecheck test unit integration demo clean

venv: $(STAMP)

# Reinstalls whenever the dependency set in pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -m "not integration"

integration: venv
	$(BIN)/pytest -m integration

test: lint typecheck
	$(BIN)/pytest

demo: venv
	$(BIN)/python -m demo --run-dir $(RUN_DIR)

clean:
	rm -rf $(VENV) $(RUN_DIR)
