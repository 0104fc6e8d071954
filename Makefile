# Two entry points: `make demo` (set up + main job) and `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LITEDET := $(VENV)/bin/litedet
export LITEDET_SHARED ?= $(abspath ../shared)

.PHONY: setup demo test test-all docs clean mutation arm64-check

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py litedet/ops/_native.c
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

# Mutation testing of the core (docs/development.md): survivors report in runs/mutation/;
# fails below a 90 % score or when a known bug class survives. Slow: not part of `make test`.
mutation: setup
	$(PY) scripts/mutation.py $(MUTATION_ARGS)

# The runtime on 64-bit ARM (Raspberry Pi) under QEMU: detections equal x86 (docs/raspberry-pi.md).
# Exit 77 = skipped (this machine cannot run it; the reason is printed). Caches in .cache/arm64.
arm64-check: setup
	bash scripts/arm64_check.sh $(ARM64_ARGS)

clean:
	rm -rf $(VENV) runs build site *.egg-info .pytest_cache
