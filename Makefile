# `make test` and `make demo` work from a fresh clone: they create .venv from the lock and run.
#
# Environments are built with uv (installed into .venv by pip, pinned), which installs from its cache in seconds.
# torch is pinned to the CPU build 2.13.0: on this project's machines that wheel lies in /opt/wheels, so no
# multi-GB CUDA build is ever pulled; elsewhere set TORCH_FIND_LINKS (e.g. to PyTorch's CPU wheel index page).
#
#   make test         the whole suite, in .venv installed from requirements-lock.txt (what CI last proved)
#   make compat       the version matrix: a focused suite under the oldest supported transformers and the newest
#                     releases, and a cross-version remote-code round trip (CI runs it after `make test`)
#   make test-latest  the whole suite against the newest releases on the registry, the upper bound lifted
#   make lock         re-resolves setup.py's ranges and rewrites both lock files
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
TORCH := torch==2.13.0
TORCH_FIND_LINKS ?= $(wildcard /opt/wheels)
LOCK := requirements-lock.txt
LOCK_OLDEST := requirements-lock-oldest.txt
VENV := .venv
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
# uv reads neither pip's configuration nor /opt/wheels: both are named here.
UV_INSTALL = $(UV) pip install -q $(if $(TORCH_FIND_LINKS),--find-links $(TORCH_FIND_LINKS))
export HF_HUB_OFFLINE := 1

.PHONY: test demo setup compat test-latest lock lint clean

setup: $(STAMP)

$(STAMP): setup.py $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q uv==$(UV_VERSION)
	$(UV_INSTALL) --python $(VENV)/bin/python $(TORCH)
	DS_BUILD_OPS=0 $(UV_INSTALL) --python $(VENV)/bin/python -c $(LOCK) $(TORCH) -e ".[test,lint,deepspeed]"
	touch $(STAMP)

test: $(STAMP)
	@$(VENV)/bin/python -c "import torch, transformers, trl; print(f'make test: torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}')"
	$(VENV)/bin/python -m pytest -q tests

demo: $(STAMP)
	$(VENV)/bin/python -m demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

compat: $(STAMP)
	UV="$(UV)" UV_INSTALL="$(UV_INSTALL)" TORCH="$(TORCH)" LOCK="$(LOCK)" LOCK_OLDEST="$(LOCK_OLDEST)" bash .ci/matrix

test-latest: $(STAMP)
	rm -rf .venv-latest
	$(UV) venv -q --python $(VENV)/bin/python .venv-latest
	$(UV_INSTALL) --python .venv-latest/bin/python $(TORCH)
	$(UV_INSTALL) --python .venv-latest/bin/python --upgrade -c <(echo "$(TORCH)") -e ".[test]" \
		--override <(echo "transformers>=$$($(VENV)/bin/python -c 'from modeling_vift.remote_code.configuration_vift import SUPPORTED_TRANSFORMERS as s; print(s[0])')")
	.venv-latest/bin/python -c "import transformers, trl, peft, accelerate, datasets; print('newest:', *(f'{m.__name__} {m.__version__}' for m in (transformers, trl, peft, accelerate, datasets)))"
	VIFT_ALLOW_UNTESTED_TRANSFORMERS=1 .venv-latest/bin/python -m pytest -q tests

lock: $(STAMP)
	bash .ci/lock

clean:
	rm -rf $(VENV) .venv-* demo_output
