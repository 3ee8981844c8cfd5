# videodit — `make help` lists the targets. Every target works from a fresh clone: the ones that
# need the virtual environment depend on `setup`, which is fast when nothing changed.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
EXTRAS  ?= dev,ray,vae

DEMO    ?= demo_out
RAW     ?= $(DEMO)/raw
OUT     ?= $(DEMO)/curated
CONFIG  ?=
EXP     ?= debug
CKPT    ?=
REAL    ?= $(OUT)/shards
FAKE    ?=
METRICS ?= fvd
PROTOCOL ?= fvd2048_16f
REPORT  ?= eval_report.json
ARGS    ?=


.PHONY: help setup test test-full lint curate train sample eval demo bench gpu-check clean

help: ## list the targets and what they do
	@echo "videodit targets (variables: RAW OUT CONFIG EXP CKPT REAL FAKE METRICS PROTOCOL REPORT DEMO ARGS):"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install videodit editable with dev extras (idempotent)

test: setup ## run the fast test suite (CPU, no slow tests)
	$(PY) -m pytest -q

test-full: setup ## run every test, the slow ones included (GPU tests skip without CUDA)
	$(PY) -m pytest -q -m ""

lint: setup ## ruff check (lint) over the whole tree
	$(VENV)/bin/ruff check .

curate: setup ## curate raw footage into shards: make curate RAW=<dir|glob|list> OUT=<dir> [CONFIG=x.yaml] [ARGS="k=v"]
	$(PY) -m curation $(CONFIG) raw=$(RAW) out=$(OUT) $(ARGS)

train: setup ## train a model: make train EXP=debug [ARGS="--trainer.max_steps=10"]
	$(PY) -m lightning_modules fit --config configs/train/$(EXP).yaml $(ARGS)

sample: setup ## sample videos from a checkpoint: make sample CKPT=path.ckpt [ARGS="--task predict"]
	$(PY) -m lightning_modules.sample --ckpt $(CKPT) $(ARGS)

eval: setup ## FVD/FID/IS report: make eval REAL=<shards|dir> FAKE=<dir|ckpt> [METRICS=fvd,fid] [PROTOCOL=...]
	$(PY) -m lightning_modules.evaluate --real $(REAL) --fake $(FAKE) --metrics $(METRICS) \
		--protocol $(PROTOCOL) --out $(REPORT) $(ARGS)

demo: setup ## end to end on CPU (~9 min): footage -> curate -> train -> sample -> FVD; see demo_out/
	$(PY) -m lightning_modules.demo --out $(DEMO) $(ARGS)

bench: setup ## run the benchmarks in bench/ and print one table of their ratios
	@for b in bench/*.py; do [ "$$b" = bench/table.py ] && continue; echo "== $$b"; $(PY) $$b || exit 1; done
	$(PY) bench/table.py

gpu-check: setup ## on a GPU machine (~8 min): gpu tests, bf16 fits, attention backends, compile, FSDP, step bench -> bench/results/gpu.json
	$(PY) bench/gpu_check.py $(ARGS)

clean: ## remove demo outputs and caches (keeps .venv)
	rm -rf $(DEMO) runs lightning_logs samples .pytest_cache .ruff_cache
