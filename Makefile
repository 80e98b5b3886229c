# `make run` and `make test` create (or reuse) the environment themselves; see README.md.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test test-all clean-env

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) run.py

test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m ""

clean-env:
	rm -rf $(VENV)
