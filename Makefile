# Two entry points: `make demo` (set up + main job) and `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LITEDET := $(VENV)/bin/litedet
export LITEDET_SHARED ?= $(abspath ../shared)

.PHONY: setup demo test test-all docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	touch $@

demo: setup
	$(PY) -m litedet.demo

test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m ''

docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) runs build site *.egg-info .pytest_cache
