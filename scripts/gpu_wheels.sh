#!/usr/bin/env bash
# Download the wheels the GPU image lacks (Python 3.12, manylinux x86-64) into .whl/ for scripts/gpu_check.sh.
# The image already has torch, transformers, accelerate, peft, safetensors, typer, rich, httpx, pyyaml, tqdm.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d .whl \
  "bm25s>=0.2.10" "PyStemmer>=2.2" "gguf>=0.10"
du -sh .whl
