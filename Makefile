PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench-full gpu-check clean

# The GPU check runs with whatever python has torch, from the source tree (no install): the
# venv where there is one, else python3 (a GPU machine's own CUDA build of torch).
CHECK_PY = $(shell test -x $(PY) && echo $(PY) || echo $(PYTHON))

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/futurefill bench all --preset quick --out results
	$(VENV)/bin/futurefill generate "The with statement" --max-new-tokens 2000 --compare --do-sample --temperature 0.8
	$(PY) scripts/serve_demo.py

test: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts
	$(PY) -m pytest

bench-full: $(STAMP)
	$(VENV)/bin/futurefill bench all --preset full --out results/full

gpu-check:
	$(CHECK_PY) scripts/gpu_check.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts

clean:
	rm -rf $(VENV) results
