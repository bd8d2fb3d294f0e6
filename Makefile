# Two commands a user needs: `make run` (the main job) and `make test` (the test suite).
# Both create .venv and install the pinned stack on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: install run test test-slow test-fast bench gpu-check gallery findings findings-recompute clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The main job: plain CLIP vs CLIPure under standard and adaptive attacks, offline, on what ships with the
## project (experiment=demo). Extra arguments: make run ARGS="experiment=cifar10_vitb32" (real OpenAI weights).
run: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) eval.py experiment=demo $(ARGS)

## The default test suite (no downloads, no GPU; about 4 minutes on 2 CPU cores), after the import-layer contracts of
## pyproject.toml ([tool.importlinter]). The slow tier (multi-process runs, sweeps killed and resumed, every backbone
## family, pyautoattack parity; about 3 more minutes) is `make test-slow`; CI runs both.
test: $(STAMP)
	$(VENV)/bin/lint-imports
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q -m "not slow" $(ARGS)

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q -m slow $(ARGS)

## The inner loop: unit and contract tests, no whole jobs (under a minute on 2 CPU cores).
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q -x -m "not slow and not e2e" $(ARGS)

## The benchmark suite (quick profile, about 12 minutes on 2 CPU cores): prints a table of ratios against their
## goals, writes bench/results/*.json and rewrites BENCHMARKS.md. make bench ARGS="--profile full" for the paper's sizes.
bench: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) bench/run.py $(ARGS)

## The GPU check (a CUDA machine, at most 8 minutes): gpu-marked tests, CPU/GPU parity of every purifier and gradient
## mode, the released fp16 precision, eval.py on the GPU, DDP with 2+ GPUs, throughput and peak memory at ViT-B-32 and
## ViT-L-14 sizes. Writes bench/results/gpu_check.{json,md} and BENCHMARKS.md's GPU section; exit status 3 without CUDA.
## make gpu-check ARGS="--cpu-smoke" runs the same logic on the CPU at toy sizes.
gpu-check: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) bench/gpu_check.py $(ARGS)

## Redraw docs/gallery/: every plot the project draws, from seeded synthetic runs (a few seconds).
gallery: $(STAMP)
	$(PY) scripts/make_gallery.py

## The findings document: docs/findings.md and docs/findings/*.png from the committed runs in findings/runs (seconds;
## byte for byte what is committed). findings-recompute runs every study again into runs/findings (resumable; about
## 75 minutes on 2 CPU cores) and writes runs/findings/findings.md from those runs.
findings: $(STAMP)
	$(PY) report.py --findings

findings-recompute: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) report.py --findings --recompute

clean:
	rm -rf $(VENV) runs wandb .pytest_cache
