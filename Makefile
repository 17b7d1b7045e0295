# `make test`  : create .venv from this repo's own files, lint, run the whole test suite.
# `make demo`  : create .venv and materialize every sample catalog batch offline, end to end.
# `make ui`    : `dagster dev` on the demo's instance (./.dagster_home): its runs and partitions.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test demo ui venv lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,ui]"
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: venv lint
	$(PY) -m pytest -q

demo: venv
	$(PY) -m bria_dagster.cli demo

ui: venv
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(VENV)/bin/dagster dev -f definitions.py

clean:
	rm -rf $(VENV) .dagster_home bria_data .pytest_cache .ruff_cache
