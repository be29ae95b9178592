# dvla_jax developer commands.
#
#   make demo                 train the CPU demo (configs/demo.flags; workdir runs/demo)
#   make demo WORKDIR=/tmp/x  same, another workdir
#   make test                 the test suite on CPU (pytest -n 2)
#   make lint                 ruff check, if ruff is installed
#   JAX=cuda                  also install jax[cuda12] (e.g. `make demo JAX=cuda`)
#
# The first run creates .venv and installs the pinned requirements; later runs skip the
# install until a requirements file changes (the stamp's name holds their checksum).

SHELL := /bin/bash
VENV ?= .venv
JAX ?= cpu
WORKDIR ?=
BOOTSTRAP_PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
PY := $(VENV)/bin/python
CUDA_JAX := -r requirements.d/cuda.txt

ifeq ($(filter $(JAX),cpu cuda),)
$(error JAX=$(JAX) is not supported; allowed: cpu, cuda)
endif

checksum = $(shell cat $(1) | cksum | cut -d' ' -f1)
JAX_EXTRA := $(if $(filter cuda,$(JAX)),$(CUDA_JAX))
RUN_STAMP := $(VENV)/.installed-run-$(JAX)-$(call checksum,requirements.txt)
DEV_STAMP := $(VENV)/.installed-dev-$(JAX)-$(call checksum,requirements.txt requirements-dev.txt)

.PHONY: help demo test lint

help:
	@sed -n '3,7s/^# //p' Makefile

$(PY):
	$(BOOTSTRAP_PYTHON) -m venv $(VENV)

$(RUN_STAMP): | $(PY)
	$(PY) -m pip install -q -r requirements.txt $(JAX_EXTRA)
	rm -f $(VENV)/.installed-run-$(JAX)-*
	touch $@

$(DEV_STAMP): | $(PY)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt $(JAX_EXTRA)
	rm -f $(VENV)/.installed-dev-$(JAX)-*
	touch $@

demo: $(RUN_STAMP)
	PYTHONPATH=$(CURDIR) $(PY) -m dvla_jax.main --flagfile=configs/demo.flags \
		$(if $(WORKDIR),--workdir=$(WORKDIR))

test: $(DEV_STAMP)
	JAX_PLATFORMS=cpu PYTHONPATH=$(CURDIR) $(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q tests

lint:
	@if [ -x $(VENV)/bin/ruff ]; then RUFF=$(VENV)/bin/ruff; \
	elif command -v ruff >/dev/null; then RUFF=ruff; \
	else echo "ruff is not installed; skipping lint (pip install ruff)"; exit 0; fi; \
	$$RUFF check .
