# Set-up commands for a fresh machine (see README, "Set-up"):
#   make demo  -> venv + install + run the embedded demo, report in ./diffdiag-report
#   make ui    -> the MLflow UI on the demo's run (http://127.0.0.1:5000; UI_PORT=...)
#   make test  -> venv + install (dev extras, headless Chromium) + the test suite
#   make base  -> rebuild the tiny base UNet shipped in integrations/assets/ (make base-check: compare only)
#   make clean -> remove the venv and everything the tools wrote here
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch (pip takes it from this machine's disk); install it
# before anything that depends on torch so that no CUDA build is pulled.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
UI_PORT ?= 5000
# The demo's embedded MLflow store (diffdiag demo --workdir, default ./.diffdiag)
DEMO_STORE ?= $(CURDIR)/.diffdiag

.PHONY: demo ui test venv install install-dev system-deps bench base base-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed-all: $(PY) pyproject.toml
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[all]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-all
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed-all
install-dev: $(VENV)/.installed-dev

# Headless Chromium for the report's browser test (Debian package; we run as root here).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi; }

demo: $(VENV)/.installed-all
	$(VENV)/bin/diffdiag demo --report diffdiag-report

ui: $(VENV)/.installed-all
	@test -f "$(DEMO_STORE)/mlflow.db" || { echo "no MLflow store at $(DEMO_STORE)/mlflow.db: run 'make demo' first"; exit 2; }
	MLFLOW_DISABLE_TELEMETRY=true MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui \
	  --backend-store-uri "sqlite:///$(DEMO_STORE)/mlflow.db" --port $(UI_PORT) --workers 1 \
	  --artifacts-destination "$(DEMO_STORE)/mlartifacts"

# The tiny base UNet the demo and the tests start from, trained by the project's own code
# (one torch thread, a few minutes): integrations/assets/tiny_base.safetensors + tiny_base.json.
base: $(VENV)/.installed-all
	OMP_NUM_THREADS=1 $(PY) -m diffdiag.integrations.tiny_lora --build-base

base-check: $(VENV)/.installed-all
	OMP_NUM_THREADS=1 $(PY) -m diffdiag.integrations.tiny_lora --build-base --check

test: $(VENV)/.installed-dev system-deps
	MLFLOW_DISABLE_TELEMETRY=true WANDB_SILENT=true $(PY) -m pytest -q $(PYTEST_ARGS)

$(VENV)/.installed-bench: $(VENV)/.installed-dev
	$(PIP) install -q -e ".[bench]"
	touch $@

bench: $(VENV)/.installed-bench
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# Everything the tools write into the repository: the venv, the demo's outputs, tracker folders
# (W&B ./wandb, MLflow ./mlruns, ./mlflow.db), test and build caches.
clean:
	rm -rf $(VENV) diffdiag-report .diffdiag test-artifacts wandb mlruns mlflow.db mlartifacts \
	  .pytest_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
