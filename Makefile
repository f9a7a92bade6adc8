# One command each: `make demo` runs the main job, `make test` runs the whole test suite.
# Both create .venv if missing and install torch (CPU wheel, pinned) before anything that needs it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
TORCH := torch==2.13.0

.PHONY: demo test setup setup-dev bench bench-135m clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	touch $@

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(STAMP)
setup-dev: $(DEV_STAMP)

demo: $(STAMP)
	$(BIN)/prefopt demo

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q

# TRL lives in its own venv so its pinned transformers/accelerate never touch .venv.
BENCH := .venv-bench
$(BENCH)/.installed: pyproject.toml
	$(PY) -m venv $(BENCH)
	$(BENCH)/bin/pip install -q $(TORCH)
	$(BENCH)/bin/pip install -q -e ".[bench,dev]"
	touch $@

bench: $(BENCH)/.installed
	$(BENCH)/bin/python benchmarks/vs_trl.py

# The real-size comparison: a random 135M-parameter Llama, both precisions (~15 min on 2 quiet cores).
bench-135m: $(BENCH)/.installed
	$(BENCH)/bin/python benchmarks/vs_trl_135m.py

clean:
	rm -rf $(VENV) $(BENCH) runs .pytest_cache
