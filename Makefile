# Two set-up commands for a fresh machine (see README):
#   make demo  -> venv + install + run the embedded demo, report in ./diffdiag-report
#   make test  -> venv + install (dev extras, headless Chromium) + the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch (pip takes it from this machine's disk); install it
# before anything that depends on torch so that no CUDA build is pulled.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test venv install install-dev system-deps bench clean

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

test: $(VENV)/.installed-dev system-deps
	MLFLOW_DISABLE_TELEMETRY=true WANDB_SILENT=true $(PY) -m pytest -q $(PYTEST_ARGS)

$(VENV)/.installed-bench: $(VENV)/.installed-dev
	$(PIP) install -q -e ".[bench]"
	touch $@

bench: $(VENV)/.installed-bench
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) diffdiag-report .diffdiag test-artifacts
