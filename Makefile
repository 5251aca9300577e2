# Two commands do everything on a fresh machine:
#   make run    create .venv if missing, install, then `kedro run --pipelines=full`
#   make test   create .venv if missing, install, then run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin

# Never prompt, never call out: telemetry off, model hubs offline.
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export PATH := $(BIN):$(PATH)

.PHONY: setup run test lint mlflow-ui viz serve lock clean

setup: $(VENV)/.installed

# torch is pinned on its own first: `pip install torch==2.13.0` takes the CPU wheel, while
# an unpinned torch would pull gigabytes of CUDA packages.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

run: setup
	kedro run --pipelines=full

# on every core (pytest-xdist), whole modules per worker (tests/conftest.py), in collection order
test: setup
	pytest -n auto --dist loadscope --no-loadscope-reorder

LINTED := src tests benchmarks

lint: setup
	ruff check $(LINTED)
	ruff format --check $(LINTED)

mlflow-ui: setup
	mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000

viz: setup
	kedro viz run --host 127.0.0.1 --no-browser

# The registry's champion as a REST endpoint (POST /invocations), local environment.
serve: setup
	MLFLOW_TRACKING_URI=sqlite:///mlruns/mlflow.db mlflow models serve \
	  -m models:/rere-recommender@champion --host 127.0.0.1 --port 5001 --env-manager local

lock: setup
	( echo '# Exact versions the project is tested with (pip freeze). `make setup` installs with'; \
	  echo '# `-c constraints.txt`; refresh with `make lock` after changing pyproject.toml.'; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -vi '^rere' | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' ) > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
