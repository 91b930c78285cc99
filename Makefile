# The two quick-start commands are `make demo` and `make test`; each sets up what it needs.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
UV_VERSION := 0.13.9

.PHONY: demo test lint typecheck servers clean

demo: $(STAMP)
	rm -rf .demo
	$(VENV)/bin/flywheel demo --dir .demo --json .demo/summary.json

test: $(STAMP) servers
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy
	FLYWHEEL_REQUIRE_POSTGRES=1 FLYWHEEL_REQUIRE_REDIS=1 $(VENV)/bin/pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy

servers:
	bash scripts/ensure-servers

$(STAMP): pyproject.toml requirements.lock
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install -q --python $(VENV)/bin/python -r requirements.lock
	$(VENV)/bin/uv pip install -q --python $(VENV)/bin/python --no-deps -e .
	touch $@

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache

# Benchmarks (see benchmarks/README.md). Peers get virtualenvs of their own: Feast pins conflict.
FEAST_VENV := benchmarks/.venv-feast
FEAST_VERSION := 0.67.0
MLFLOW_VENV := benchmarks/.venv-mlflow
MLFLOW_VERSION := 3.17.2
LIGHTGBM_VERSION := 4.7.0
# MLServer loads the same model pickle as .venv: same scikit-learn and numpy as requirements.lock.
# uvloop 0.22+ breaks MLServer 1.7.1's inference workers (asyncio.get_event_loop() raises).
MLSERVER_VENV := benchmarks/.venv-mlserver
MLSERVER_VERSION := 1.7.1
SKLEARN_VERSION := 1.9.1
NUMPY_VERSION := 2.4.6
UVLOOP_VERSION := 0.21.0

.PHONY: bench-setup bench bench-quick

bench-setup: $(STAMP) $(FEAST_VENV)/.installed $(MLFLOW_VENV)/.installed $(MLSERVER_VENV)/.installed

$(FEAST_VENV)/.installed:
	test -x $(FEAST_VENV)/bin/python || $(PY) -m venv $(FEAST_VENV)
	$(VENV)/bin/uv pip install -q --python $(FEAST_VENV)/bin/python "feast[duckdb,redis]==$(FEAST_VERSION)"
	touch $@

$(MLFLOW_VENV)/.installed:
	test -x $(MLFLOW_VENV)/bin/python || $(PY) -m venv $(MLFLOW_VENV)
	$(VENV)/bin/uv pip install -q --python $(MLFLOW_VENV)/bin/python "mlflow==$(MLFLOW_VERSION)" "lightgbm==$(LIGHTGBM_VERSION)"
	touch $@

$(MLSERVER_VENV)/.installed:
	test -x $(MLSERVER_VENV)/bin/python || $(PY) -m venv $(MLSERVER_VENV)
	$(VENV)/bin/uv pip install -q --python $(MLSERVER_VENV)/bin/python "mlserver==$(MLSERVER_VERSION)" "mlserver-sklearn==$(MLSERVER_VERSION)" "scikit-learn==$(SKLEARN_VERSION)" "numpy==$(NUMPY_VERSION)" "uvloop==$(UVLOOP_VERSION)"
	touch $@

bench-quick: bench-setup
	$(VENV)/bin/python benchmarks/feature_store.py --quick --json benchmarks/.data/bench-quick.json
	$(VENV)/bin/python benchmarks/tracking.py --quick --json benchmarks/.data/bench-tracking-quick.json
	$(VENV)/bin/python benchmarks/serving.py --quick --json benchmarks/.data/bench-serving-quick.json

bench: bench-setup
	$(VENV)/bin/python benchmarks/feature_store.py --json benchmarks/.data/bench-full.json
	$(VENV)/bin/python benchmarks/tracking.py --json benchmarks/.data/bench-tracking-full.json
	$(VENV)/bin/python benchmarks/serving.py --json benchmarks/.data/bench-serving-full.json
