#!/usr/bin/env bash
# The GPU check with the vLLM engine (issue 7), on a machine where scripts/gpu_payload.sh unpacked vLLM, its
# dependencies, the SmolLM2 GGUF and the data (/tmp/site, /tmp/data):
#   OUT=/path STAGES="check demo" bash scripts/gpu_vllm_check.sh [extra gpu_check.py arguments]
# Stages, in order (times measured on one H100, 2026-11-27):
#   check       benchmarks/vllm_check.py: vLLM starts (else retried with enforce_eager), pushed weights reach it, the
#               log-prob gap to HF (~90 s with the first torch.compile)
#   demo        benchmarks/gpu_check.py --engine vllm: the demo with vLLM GRPO rollouts, then HF vs vLLM rollout
#               tokens/s on the warmed model (~270 s; needs `check` first for its kwargs)
#   decode      benchmarks/decode_compare.py: HF vs in-process vLLM on 512 long, decode-bound episodes, vLLM with
#               sampler log-probs for all / 1 in 8 / no episodes, and without per-request seeds (~85 s with two
#               vLLM settings; needs no other stage)
#   decode-mp   the same with vLLM in its own engine process (not yet run)
#   decode-3b   the same (in-process) on a Qwen2.5-3B-shaped model with random weights and SmolLM2's tokenizer,
#               256 episodes: where the GPU, not the host, sets the pace (not yet run; ~4 min estimated)
#               (the decode stages also write a host cProfile table of one more vLLM run: $OUT/<stage>.profile.txt)
#   server      `vllm serve` on the base model (VLLM_SERVER_DEV_MODE=1, port 8011), then gpu_check.py --engine
#               vllm-server: GRPO rollouts from the server, weights reloaded by path (not yet run; needs the
#               server wheels gpu_payload.sh now carries)
#   projection  benchmarks/projection.py --engine vllm: HF and vLLM decode of a Qwen2.5-3B-shaped model, hours per
#               round on 8 GPUs (not yet run with vLLM; ~100 s with HF alone)
#   eval        `searche1 eval` of the same dev questions (EVAL_N per dataset, 40) with --engine hf and --engine vllm
#               (the demo's warmed model and index when `demo` ran, else the base model and a new BM25 index):
#               evaluation seconds (settings.seconds: the engine's start not counted) and EM of each (not yet run)
# A call runs at most 10 minutes: split the stages over calls to a warm machine. Results are copied to $OUT (the
# device tool returns at most 8 files, two folders down).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-vllm-check}
STAGES=${STAGES:-check demo}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1  # no internet there: nothing may wait on the hub or usage stats
KW=${VLLM_KWARGS:-'{}'}  # e.g. '{"enforce_eager": true}'; vllm_check.py falls back to it if vLLM does not start
has() { [[ " $STAGES " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
if has check; then
  timeout "${CHECK_LIMIT:-150}" python3 benchmarks/vllm_check.py --model smollm2-135m-instruct --out /tmp/vc \
    --kwargs "$KW" > "$OUT/vllm_check.log" 2>&1
  echo "vllm_check exit $?"
  cp /tmp/vc/vllm_check.json "$OUT/" 2>/dev/null
  tail -25 "$OUT/vllm_check.log"
  [ -f /tmp/vc/vllm_kwargs.json ] || { echo "vLLM did not start"; exit 1; }
fi
if has demo; then
  timeout "${LIMIT:-390}" python3 benchmarks/gpu_check.py --out /tmp/gc --data /tmp/data/searchqa --engine vllm \
    --vllm-kwargs "$(cat /tmp/vc/vllm_kwargs.json 2>/dev/null || echo "$KW")" --eval-limit "${EVAL_LIMIT:-30}" \
    --profile "$@" > "$OUT/gpu_check.log" 2>&1
  echo "gpu_check exit $?"
  cp /tmp/gc/gpu_check.json /tmp/gc/rollout_vllm.json /tmp/gc/rollout_vllm_profile.txt "$OUT/" 2>/dev/null
  cp /tmp/gc/work/demo/run/phase-00-grpo/metrics.jsonl "$OUT/grpo_metrics.jsonl" 2>/dev/null
  tail -45 "$OUT/gpu_check.log"
fi
for mode in decode decode-mp decode-3b; do
  has $mode || continue
  idx=(); [ -d /tmp/gc/work/demo/index ] && idx=(--index /tmp/gc/work/demo/index)  # else it builds one (~6 s)
  extra=(); [ $mode = decode-mp ] && extra=(--vllm-multiprocessing)
  [ $mode = decode-3b ] && extra=(--shape qwen2.5-3b --batch 256)
  timeout "${DECODE_LIMIT:-420}" python3 benchmarks/decode_compare.py --model smollm2-135m-instruct \
    "${idx[@]}" --data /tmp/data/searchqa --out "$OUT/$mode.json" "${extra[@]}" --profile > "/tmp/$mode.log" 2>&1
  echo "$mode exit $?"; tail -22 "/tmp/$mode.log"
done
if has server; then
  model=$(python3 -c "from searche1.models import resolve_model_path as r; print(r('smollm2-135m-instruct'))")
  VLLM_SERVER_DEV_MODE=1 setsid python3 -m vllm.entrypoints.cli.main serve "$model" --port 8011 \
    --logprobs-mode processed_logprobs --gpu-memory-utilization 0.3 --max-model-len 2048 > /tmp/serve.log 2>&1 &
  for _ in $(seq 150); do  # (no curl assumed on the image)
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8011/health', timeout=2)" 2>/dev/null && break
    sleep 1
  done
  timeout "${LIMIT:-390}" python3 benchmarks/gpu_check.py --out /tmp/gs --data /tmp/data/searchqa \
    --engine vllm-server --vllm-url http://127.0.0.1:8011 --eval-limit "${EVAL_LIMIT:-30}" --batches 128 "$@" \
    > "$OUT/gpu_check_server.log" 2>&1
  echo "server gpu_check exit $?"; pkill -f "vllm.entrypoints.cli.main serve" || true
  cp /tmp/gs/gpu_check.json "$OUT/gpu_check_server.json" 2>/dev/null
  tail -20 /tmp/serve.log; tail -30 "$OUT/gpu_check_server.log"
fi
if has projection; then
  timeout "${PLIMIT:-300}" python3 benchmarks/projection.py --engine vllm --out /tmp/proj/projection.json \
    > /tmp/projection.log 2>&1
  echo "projection exit $?"; cp /tmp/proj/projection.json "$OUT/" 2>/dev/null; tail -20 /tmp/projection.log
fi
if has eval; then
  if [ -f /tmp/gc/gpu_check.json ]; then
    read -r model index < <(python3 -c "import json; p = json.load(open('/tmp/gc/gpu_check.json'))['paths']; \
print(p['warm'], p['index'])")
  else
    model=smollm2-135m-instruct index=/tmp/eval-index
    [ -d $index ] || python3 -m searche1 index --corpus /tmp/data/searchqa/corpus.jsonl --out $index > /dev/null
  fi
  for engine in hf vllm; do
    timeout "${ELIMIT:-240}" python3 -m searche1 eval --model "$model" --index "$index" --engine $engine \
      --data /tmp/data/searchqa/dev --limit "${EVAL_N:-40}" --vllm-kwargs "$KW" --out "$OUT/eval_$engine.json" \
      > "/tmp/eval_$engine.log" 2>&1
    echo "eval $engine exit $?"; tail -14 "/tmp/eval_$engine.log"
  done
  python3 -c "import json; r = {e: json.load(open(f'$OUT/eval_{e}.json')) for e in ('hf', 'vllm')}; \
print({e: (v['settings']['seconds'], v['average']['em']) for e, v in r.items()})" 2>&1 | tee "$OUT/eval_timing.txt"
fi
