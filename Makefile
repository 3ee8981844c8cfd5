# videodit — `make help` lists the targets. Every target works from a fresh clone: the ones that
# need the virtual environment depend on `setup`, which is fast when nothing changed.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
EXTRAS  ?= dev,ray,vae

RAW     ?= demo_out/raw
OUT     ?= demo_out/curated
CONFIG  ?=
EXP     ?= debug
CKPT    ?=
REAL    ?= $(OUT)/shards
FAKE    ?=
METRICS ?= fvd
PROTOCOL ?= fvd2048_16f
REPORT  ?= eval_report.json
ARGS    ?=

# $(call need,<python module>,<what>,<issue>): stop with a clear message until that part is built
need = $(PY) -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('$(1)') else 3)" 2>/dev/null \
	|| { echo "make: '$(2)' is not built yet (module $(1), issue $(3))." >&2; exit 2; }

.PHONY: help setup test test-full lint curate train sample eval demo bench clean

help: ## list the targets and what they do
	@echo "videodit targets (variables: RAW OUT CONFIG EXP CKPT REAL FAKE METRICS PROTOCOL ARGS):"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
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
	@$(call need,curation.pipeline,curate,#3)
	$(PY) -m curation $(CONFIG) raw=$(RAW) out=$(OUT) $(ARGS)

train: setup ## train a model: make train EXP=debug [ARGS="--trainer.max_steps=10"]
	@$(call need,lightning_modules.video_diffusion,train,#5)
	$(PY) -m lightning_modules fit --config configs/train/$(EXP).yaml $(ARGS)

sample: setup ## sample videos from a checkpoint: make sample CKPT=path.ckpt [ARGS="--task predict"]
	@$(call need,lightning_modules.sample,sample,#5)
	$(PY) -m lightning_modules.sample --ckpt $(CKPT) $(ARGS)

eval: setup ## FVD/FID/IS report: make eval REAL=<shards|dir> FAKE=<dir|ckpt> [METRICS=fvd,fid] [PROTOCOL=...]
	@$(call need,lightning_modules.evaluate,eval,#6)
	$(PY) -m lightning_modules.evaluate --real $(REAL) --fake $(FAKE) --metrics $(METRICS) \
		--protocol $(PROTOCOL) --out $(REPORT) $(ARGS)

demo: setup ## end to end on synthetic footage: generate -> curate -> train -> sample -> eval
	$(PY) -m curation.synthetic $(RAW) --videos 6 --seed 0
	@$(call need,curation.pipeline,demo: curate,#3)
	$(PY) -m curation $(CONFIG) raw=$(RAW) out=$(OUT) caption.enabled=false $(ARGS)
	@$(call need,lightning_modules.video_diffusion,demo: train,#5)
	$(PY) -m lightning_modules fit --config configs/train/demo.yaml
	@$(call need,lightning_modules.evaluate,demo: eval,#6)
	@echo "demo: done"

bench: setup ## run the benchmarks in bench/ and print one table of their ratios
	@for b in bench/*.py; do [ "$$b" = bench/table.py ] && continue; echo "== $$b"; $(PY) $$b || exit 1; done
	$(PY) bench/table.py

clean: ## remove demo outputs and caches (keeps .venv)
	rm -rf demo_out lightning_logs .pytest_cache .ruff_cache
