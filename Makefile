# The few commands people need. `make run` and `make test` install what they need first, from
# requirements.lock (every package pinned; `make lock` regenerates it after a change to pyproject.toml).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
# uv resolves the lock (`make lock`); pip installs it, so the machine's pip configuration (an index or a
# folder of wheels that serves torch's CPU build) is honoured.
UV_VERSION := 0.13.9
# Set TORCH_INDEX=https://download.pytorch.org/whl/cpu to take torch's CPU build from PyTorch's index;
# on Linux, PyPI's torch is the CUDA build.
TORCH_INDEX ?=
PIP := $(BIN)/pip install -q -c $(LOCK) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

.PHONY: setup run test test-slow test-install lint lock bench-cpu clean

$(BIN)/hybrid-agent: pyproject.toml $(LOCK)
	$(PY) -m venv $(VENV)
	$(PIP) pip setuptools
	$(PIP) torch
	$(PIP) --no-build-isolation -e '.[dev]'
	touch $@

setup: $(BIN)/hybrid-agent

run: setup
	$(BIN)/hybrid-agent

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q

test-slow: setup
	$(BIN)/pytest -q -m slow

# The built wheel in fresh venvs: alone (no dev extras) and beside the newest transformers + `kernels`.
test-install: setup
	$(BIN)/pytest -q -m install

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

lock:
	$(PY) -m venv .venv-lock
	.venv-lock/bin/pip install -q uv==$(UV_VERSION)
	printf 'torch==2.13.0\npip\nsetuptools>=77\n' | .venv-lock/bin/uv pip compile pyproject.toml - \
		--extra dev --extra postgres --universal --python-version 3.11 --custom-compile-command 'make lock' -o $(LOCK)

bench-cpu: setup
	$(BIN)/python bench/cpu_model.py

clean:
	rm -rf $(VENV) .venv-lock build dist *.egg-info
