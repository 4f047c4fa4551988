# The two promises of the README: `make demo` and `make test`, each from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR ?= .irisgate/demo
SCENARIO ?= good

.PHONY: venv lint typecheck test unit integration demo up oip-stubs clean

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
	$(BIN)/python -m demo --scenario $(SCENARIO) --run-dir $(RUN_DIR)

up: venv
	$(BIN)/python -m demo --up --run-dir .irisgate/up

# The load tests' gRPC stubs (committed; regenerate after editing the .proto).
oip-stubs: venv
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. \
		load_tests/oip/grpc_predict_v2.proto

clean:
	rm -rf $(VENV) .irisgate
