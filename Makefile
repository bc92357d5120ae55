# `make test` and `make demo` work from a fresh clone: they create .venv, install the package and run.
# torch is pinned to 2.13.0 first: on this kind of machine that is a CPU build lying on disk, so no multi-GB
# CUDA build is pulled; the package's own floor (torch>=2.4) is then already satisfied.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo setup clean

setup: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m demo

clean:
	rm -rf $(VENV) demo_output
