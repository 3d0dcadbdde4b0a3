# The few commands people need. `make run` and `make test` install what they need first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test test-slow lint bench-cpu clean

$(BIN)/hybrid-agent: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU wheel first, so the range in pyproject.toml never pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/hybrid-agent

run: setup
	$(BIN)/hybrid-agent

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q

test-slow: setup
	$(BIN)/pytest -q -m slow

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench-cpu: setup
	$(BIN)/python bench/cpu_model.py

clean:
	rm -rf $(VENV) build *.egg-info
