# gan_t2i: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Offline by default: the bundled text model needs no hub, and runs log to wandb offline.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

EXPERIMENT ?= shapes_quick
ARGS ?=

.PHONY: help install data train test lint format bench eval compare sample clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv with the pinned torch pair and gan_t2i[dev] (seconds when done)

data: $(STAMP) ## build the image store and caption embeddings of EXPERIMENT (reused when built)
	$(PY) -m gan_t2i.prepare experiment=$(EXPERIMENT) $(ARGS)

train: data ## prepare data, train EXPERIMENT (default shapes_quick), evaluate, print where results are
	$(PY) -m gan_t2i.train experiment=$(EXPERIMENT) logger=wandb $(ARGS)
	$(PY) -m gan_t2i.evaluate run=$$(ls -td outputs/runs/$(EXPERIMENT)-*/ | head -1)

# The newest run with a checkpoint (for sample / eval).
RUN ?= $(shell ls -t outputs/runs/*/checkpoints/last.pt 2>/dev/null | head -1 | xargs -r dirname | xargs -r dirname)
PROMPTS ?= a large red circle in the top left|a small blue square in the center|a large yellow triangle in the bottom right

sample: $(STAMP) ## sample the newest run: make sample PROMPTS='a red circle in the top left|...'
	@test -n "$(RUN)" || { echo "no run with a checkpoint under outputs/runs: run make train first"; exit 1; }
	$(PY) -m gan_t2i.sample run=$(RUN) "prompts=$$($(PY) -c 'import json,sys; print(json.dumps(sys.argv[1].split("|")))' "$(PROMPTS)")" $(ARGS)

eval: $(STAMP) ## evaluate the newest run (RUN=... to pick one, ARGS='checkpoint=all')
	@test -n "$(RUN)" || { echo "no run with a checkpoint under outputs/runs: run make train first"; exit 1; }
	$(PY) -m gan_t2i.evaluate run=$(RUN) $(ARGS)

compare: $(STAMP) ## compare all runs under outputs/runs (tables + plots in outputs/compare/)
	$(PY) -m gan_t2i.compare 'runs=[outputs/runs/*]' $(ARGS)

bench: $(STAMP) ## speed benchmark: training, sampling, text, data (table + outputs/bench/<time>/bench.json)
	$(PY) -m gan_t2i.bench $(ARGS)

test: $(STAMP) ## run the test suite (CPU, a few minutes)
	WANDB_MODE=disabled $(PY) -m pytest -q $(ARGS)

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check gan_t2i tests

format: $(STAMP) ## ruff format + import sorting
	$(VENV)/bin/ruff check --fix --select I gan_t2i tests

clean: ## remove caches (keeps data/ and outputs/)
	rm -rf .pytest_cache .ruff_cache $$(find . -name __pycache__ -not -path './.venv/*')
