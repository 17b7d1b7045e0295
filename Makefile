# `make test`  : create .venv from this repo's own files (the dev extra), install the system
#                packages the tests use (tools/system-deps.sh), lint, run the whole test suite.
# `make demo`  : create .venv with the runtime dependencies only and materialize every sample
#                catalog batch offline, end to end.
# `make ui`    : `dg dev` on the demo's instance (./.dagster_home): its runs and partitions.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# No bytecode at install: Python writes it for the modules that are actually imported.
PIP_INSTALL := $(PY) -m pip install --quiet --no-compile

.PHONY: test demo ui venv lint system-deps clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# One stamp per set of dependencies: the runtime alone (demo), + the UI, + the test tools.
$(VENV)/.runtime: pyproject.toml | $(VENV)/bin/python
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.ui: $(VENV)/.runtime
	$(PIP_INSTALL) -e ".[ui]"
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(PIP_INSTALL) -e ".[dev,ui]"
	touch $@

venv: $(VENV)/.dev

system-deps:
	@sh tools/system-deps.sh

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(VENV)/.dev system-deps lint
	$(PY) -m pytest -q

demo: $(VENV)/.runtime
	$(PY) -m bria_dagster.cli demo

ui: $(VENV)/.ui
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(VENV)/bin/dg dev -f definitions.py

clean:
	rm -rf $(VENV) .dagster_home bria_data .pytest_cache .ruff_cache
