# Quickstart targets (see README). Everything runs inside a project-local virtual environment.
#   make demo   set up (incl. the real model install), then run the main job (jobs/sweep.py, the real-world demo) on a local Ray
#   make test   set up, then run the default test tiers (unit + integration)
# On a GPU machine, install with `make setup CONSTRAINTS=` to keep your own torch build.

PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints/cpu.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp

export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo check-toyworld test test-all lint toyworld browser

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev]"
	$(PY) -m eval.realworld install
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m jobs.sweep

check-toyworld: setup
	$(PY) -m eval.toyworld check

test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m "not gpu"

lint: setup
	$(PY) -m ruff check .

toyworld: setup
	$(PY) -m eval.toyworld build

# Headless Chromium (Debian's package) for tests/integration/test_report_browser.py; needs root.
browser:
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
