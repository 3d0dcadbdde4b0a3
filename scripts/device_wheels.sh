#!/usr/bin/env bash
# Here (with the package index): download into .whl/ the wheels the device machine lacks for the GPU
# tests and benchmarks, for its Python 3.12, at the versions requirements.lock pins. The device has
# torch, Triton, numpy and transformers of its own and no index; carry the folder and install it there:
#   device run, carry [".whl"]:
#     python3 -m pip install -q --no-index --no-deps .whl/*.whl && bash scripts/device_gpu_checks.sh $OUT
# Left out: what the device image has, and what only the CPU suite uses (ruff, psycopg), to stay well
# under the 64 MiB the working tree may carry.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${UV:-uv}
list=$(mktemp)
printf 'pytest-xdist\nflash-linear-attention\n' | "$uv" pip compile pyproject.toml - --extra dev \
    -c requirements.lock --python-version 3.12 --python-platform x86_64-manylinux_2_28 \
    --no-header --no-annotate --quiet \
  | grep -vE '^(nvidia-|cuda-)' \
  | grep -vE '^(torch|triton|setuptools|pip|ruff|numpy|sympy|networkx|mpmath|psycopg|psycopg-binary|cryptography|cffi|pycparser|pyyaml|filelock|fsspec|typing-extensions|hf-xet|pyjwt|transformers|kernels|huggingface-hub)==' \
  > "$list"
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary :all: --python-version 3.12 --implementation cp \
    --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl -r "$list"
rm -f "$list"
du -sh .whl
