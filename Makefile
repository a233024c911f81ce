# The whole set-up on a fresh machine: `make test` or `make bench`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export AL_DATA_DIR ?= $(abspath ../shared/data)

# Label Studio (the server, about 1 GB with its dependencies) lives in its own environment, not the project's;
# the --oracle label-studio tests start it from here (or from $AL_LABEL_STUDIO).
LS_VENV ?= .venv-label-studio
LABEL_STUDIO_VERSION ?= 1.23.2

.PHONY: install lint test test-slow test-all bench clean label-studio-env

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision pinned to the builds on this machine's disk; other machines take any admitted version.
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

$(LS_VENV)/.installed:
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LS_VENV)/bin/python -m pip install -q 'label-studio==$(LABEL_STUDIO_VERSION)'
	touch $@

label-studio-env: $(LS_VENV)/.installed

# House rules: ruff (lint and format), mypy on the library, import-linter's layer and no-cycle contracts.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The suite runs on every core (pytest-xdist; a test file stays on one worker, so its module fixtures start once);
# PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= auto
PYTEST_PAR = $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

test: $(VENV)/.installed
	$(PY) -m pytest -q --durations=10 $(PYTEST_PAR)

# The long runs (-m slow: repeated subprocess exit codes, CLI processes side by side, real-data runs).
test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow --durations=10 $(PYTEST_PAR)

test-all: $(VENV)/.installed
	$(PY) -m pytest -q -m ''

bench: $(VENV)/.installed
	$(PY) -m al.bench --strategy regrad --budget 2000

clean:
	rm -rf $(VENV) $(LS_VENV) *.egg-info .pytest_cache
