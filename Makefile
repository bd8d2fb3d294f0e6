# Two commands a user needs: `make run` (the main job) and `make test` (the test suite).
# Both create .venv and install the pinned stack on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: install run test test-all clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The main job: evaluate on the defaults that ship with the project (offline). Extra overrides: make run ARGS="purifier=clipure_cos"
run: $(STAMP)
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-0} $(PY) eval.py $(ARGS)

## The default test suite (no downloads, no GPU).
test: $(STAMP)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) runs wandb .pytest_cache
