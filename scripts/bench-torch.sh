#!/usr/bin/env bash
# PyTorch 2.11.0 (with numpy, pandas and Pillow) in a virtual environment under the build cache, for the
# side-by-side benchmarks only (`make bench`); about 3 GB with its CUDA
# libraries, which PyPI's Linux wheel depends on. Idempotent. Prints the
# environment's python.
set -euo pipefail

version=2.11.0
cache=${BUILD_CACHE:-$HOME/.cache/mlq}
venv=$cache/torch-$version-venv

if ! "$venv/bin/python" -c "import torch, sys, numpy, pandas, PIL; sys.exit(torch.__version__.split('+')[0] != '$version')" 2>/dev/null; then
    echo "bench: installing torch==$version into $venv (about 3 GB)" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$version" numpy pandas pillow >&2
fi
echo "$venv/bin/python"
