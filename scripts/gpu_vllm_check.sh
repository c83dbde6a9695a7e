#!/usr/bin/env bash
# The GPU check with the vLLM engine (issue 7), on a machine where scripts/gpu_payload.sh unpacked vLLM, its
# dependencies, the SmolLM2 GGUF and the data (/tmp/site, /tmp/data):
#   OUT=/path bash scripts/gpu_vllm_check.sh
# 1. benchmarks/vllm_check.py: vLLM starts (falling back to enforce_eager), pushed weights reach it, log-prob gap;
# 2. benchmarks/gpu_check.py --engine vllm: the demo with vLLM GRPO rollouts, then HF vs vLLM rollout tokens/s.
# Results are copied to $OUT as they come (the device tool returns at most 8 files, two folders down).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-vllm-check}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
KW=${VLLM_KWARGS:-'{"attention_config": {"backend": "TRITON_ATTN"}}'}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout "${CHECK_LIMIT:-150}" python3 benchmarks/vllm_check.py --model smollm2-135m-instruct --out /tmp/vc \
  --kwargs "$KW" > "$OUT/vllm_check.log" 2>&1
rc=$?
cp /tmp/vc/vllm_check.json "$OUT/" 2>/dev/null
tail -25 "$OUT/vllm_check.log"
[ -f /tmp/vc/vllm_kwargs.json ] || { echo "vLLM did not start (rc $rc)"; exit 1; }
timeout "${LIMIT:-390}" python3 benchmarks/gpu_check.py --out /tmp/gc --data /tmp/data/searchqa --engine vllm \
  --vllm-kwargs "$(cat /tmp/vc/vllm_kwargs.json)" --eval-limit "${EVAL_LIMIT:-30}" "$@" > "$OUT/gpu_check.log" 2>&1
echo "gpu_check exit $?"
cp /tmp/gc/gpu_check.json /tmp/gc/rollout_vllm.json "$OUT/" 2>/dev/null
cp /tmp/gc/work/demo/run/phase-00-grpo/metrics.jsonl "$OUT/grpo_metrics.jsonl" 2>/dev/null
tail -45 "$OUT/gpu_check.log"
