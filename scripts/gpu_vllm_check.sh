#!/usr/bin/env bash
# The GPU check with the vLLM engine (issue 7), on a machine where scripts/gpu_payload.sh unpacked vLLM, its
# dependencies, the SmolLM2 GGUF and the data (/tmp/site, /tmp/data):
#   OUT=/path STAGES="check demo" bash scripts/gpu_vllm_check.sh [extra gpu_check.py arguments]
# Stages, in order (times measured on one H100, 2026-11-27):
#   check       benchmarks/vllm_check.py: vLLM starts (else retried with enforce_eager), pushed weights reach it, the
#               log-prob gap to HF (~90 s with the first torch.compile)
#   launcher    torchrun --nproc_per_node 1 benchmarks/vllm_check.py --launcher: a rank's process group as on
#               several GPUs (cpu:gloo,cuda:nccl: CPU and CUDA all-reduce, object gather), then the same check with
#               vLLM's external_launcher executor built on that group (not yet run; ~60-90 s)
#   demo        benchmarks/gpu_check.py --engine vllm: the demo with vLLM GRPO rollouts, then HF vs vLLM rollout
#               tokens/s on the warmed model (~270 s; needs `check` first for its kwargs)
#   decode      benchmarks/decode_compare.py: HF vs in-process vLLM on 512 long, decode-bound episodes, vLLM with
#               sampler log-probs for all / 1 in 8 / no episodes, and without per-request seeds (~85 s with two
#               vLLM settings; needs no other stage)
#   decode-mp   the same with vLLM in its own engine process (not yet run)
#   decode-3b   the same (in-process) on a Qwen2.5-3B-shaped model with random weights and SmolLM2's tokenizer,
#               256 episodes: where the GPU, not the host, sets the pace (not yet run; ~4 min estimated)
#               (the decode stages also write a host cProfile table of one more vLLM run: <stage>.profile.txt)
#   server      `vllm serve` on the base model (VLLM_SERVER_DEV_MODE=1, port 8011), then gpu_check.py --engine
#               vllm-server: GRPO rollouts from the server, weights reloaded by path (not yet run; needs the
#               server wheels gpu_payload.sh now carries)
#   projection  benchmarks/projection.py --engine vllm: HF and vLLM decode of a Qwen2.5-3B-shaped model, hours per
#               round on 8 GPUs (not yet run with vLLM; ~100 s with HF alone)
#   eval        `searche1 eval` of the same dev questions (EVAL_N per dataset, 40) with --engine hf and --engine vllm
#               (the demo's warmed model and index when `demo` ran, else the base model and a new BM25 index):
#               evaluation seconds (settings.seconds: the engine's start not counted) and EM of each (not yet run)
# A call runs at most 10 minutes: split the stages over calls to a warm machine. Every stage's timeout is cut to
# what is left of BUDGET seconds (default 570; set it under the call's limit), so the script ends, and bundles what it
# has, before the device tool kills it. Results and logs go to /tmp/gvc/res, then to $OUT as results.tgz (all of
# them, updated after each stage) plus the first 6 JSON results beside it: the device tool returns at most 8 files.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-vllm-check}
STAGES=${STAGES:-check demo}
BUDGET=${BUDGET:-570}
RES=/tmp/gvc/res
rm -rf "$RES"; mkdir -p "$RES" "$OUT"
bundle() {  # everything in $RES to $OUT/results.tgz, and the first JSON results as they are
  tar -C "$RES" -czf /tmp/gvc/results.tgz . && cp /tmp/gvc/results.tgz "$OUT/"
  find "$OUT" -maxdepth 1 -name '*.json' -delete; find "$RES" -maxdepth 1 -name '*.json' | sort | head -6 \
    | xargs -r cp -t "$OUT/"
}
trap bundle EXIT
lim() {  # a stage's limit: $1 seconds, or what is left of BUDGET if less (0: skip the stage)
  local left=$((BUDGET - SECONDS - 15)); ((left < 30)) && left=0; echo $(($1 < left ? $1 : left))
}
run() {  # run LIMIT CMD...: CMD under timeout (SIGKILL 10 s after SIGTERM); skipped when no time is left
  local t; t=$(lim "$1"); shift
  if ((t == 0)); then echo "skipped (BUDGET=$BUDGET s spent): $*"; return 124; fi
  timeout -k 10 "$t" "$@"
}
kw() { cat /tmp/vc/vllm_kwargs.json 2>/dev/null || echo "$KW"; }  # the keywords vLLM started with in `check`
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1  # no internet there: nothing may wait on the hub or usage stats
KW=${VLLM_KWARGS:-'{}'}  # e.g. '{"enforce_eager": true}'; vllm_check.py falls back to it if vLLM does not start
has() { [[ " $STAGES " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$RES/gpu.txt"
if has check; then
  rm -f /tmp/vc/vllm_kwargs.json /tmp/vc/vllm_check.json  # (each stage first drops what an earlier call left)
  run "${CHECK_LIMIT:-150}" python3 benchmarks/vllm_check.py --model smollm2-135m-instruct --out /tmp/vc \
    --kwargs "$KW" > "$RES/vllm_check.log" 2>&1
  echo "vllm_check exit $?"
  cp /tmp/vc/vllm_check.json "$RES/" 2>/dev/null
  tail -25 "$RES/vllm_check.log"
  [ -f /tmp/vc/vllm_kwargs.json ] || { echo "vLLM did not start"; exit 1; }
  bundle
fi
if has launcher; then
  rm -rf /tmp/vcl
  run "${CHECK_LIMIT:-150}" python3 -m torch.distributed.run --nproc_per_node 1 --master_port 29533 \
    benchmarks/vllm_check.py --launcher --model smollm2-135m-instruct --out /tmp/vcl --kwargs "$(kw)" \
    > "$RES/vllm_check_launcher.log" 2>&1
  echo "vllm_check --launcher exit $?"
  cp /tmp/vcl/vllm_check_launcher.json "$RES/" 2>/dev/null
  tail -25 "$RES/vllm_check_launcher.log"
  bundle
fi
if has demo; then
  rm -f /tmp/gc/gpu_check.json /tmp/gc/rollout_vllm.json /tmp/gc/*profile*.txt
  run "${LIMIT:-390}" python3 benchmarks/gpu_check.py --out /tmp/gc --data /tmp/data/searchqa --engine vllm \
    --vllm-kwargs "$(kw)" --eval-limit "${EVAL_LIMIT:-30}" --profile "$@" > "$RES/gpu_check.log" 2>&1
  echo "gpu_check exit $?"
  cp /tmp/gc/gpu_check.json /tmp/gc/rollout_vllm.json /tmp/gc/*profile*.txt "$RES/" 2>/dev/null
  cp /tmp/gc/work/demo/run/phase-00-grpo/metrics.jsonl "$RES/grpo_metrics.jsonl" 2>/dev/null
  tail -45 "$RES/gpu_check.log"
  bundle
fi
for mode in decode decode-mp decode-3b; do
  has $mode || continue
  idx=(); [ -d /tmp/gc/work/demo/index ] && idx=(--index /tmp/gc/work/demo/index)  # else it builds one (~6 s)
  extra=(); [ $mode = decode-mp ] && extra=(--vllm-multiprocessing)
  [ $mode = decode-3b ] && extra=(--shape qwen2.5-3b --batch 256)
  run "${DECODE_LIMIT:-420}" python3 benchmarks/decode_compare.py --model smollm2-135m-instruct \
    "${idx[@]}" --data /tmp/data/searchqa --out "$RES/$mode.json" "${extra[@]}" --vllm-kwargs "$(kw)" --profile \
    > "$RES/$mode.log" 2>&1
  echo "$mode exit $?"; tail -22 "$RES/$mode.log"
  bundle
done
if has server; then
  model=$(python3 -c "from searche1.models import resolve_model_path as r; print(r('smollm2-135m-instruct'))")
  # its own session (the device tool would not end it with the call): stopped below by its process group (its pid,
  # written by the session leader itself), not by its name
  rm -f /tmp/gvc/serve.pid
  VLLM_SERVER_DEV_MODE=1 setsid bash -c 'echo $$ > /tmp/gvc/serve.pid; exec "$@"' serve python3 -m \
    vllm.entrypoints.cli.main serve "$model" --port 8011 --logprobs-mode processed_logprobs \
    --gpu-memory-utilization 0.3 --max-model-len 2048 > "$RES/serve.log" 2>&1 &
  for _ in $(seq 20); do [ -s /tmp/gvc/serve.pid ] && break; sleep 0.5; done
  server=$(cat /tmp/gvc/serve.pid)
  stop_server() { kill -- -"$server" 2>/dev/null; for _ in $(seq 30); do
    kill -0 "$server" 2>/dev/null || return 0; sleep 1; done; kill -9 -- -"$server" 2>/dev/null; }
  trap 'stop_server; bundle' EXIT
  for _ in $(seq 150); do  # (no curl assumed on the image); gives up at once if the server died
    kill -0 "$server" 2>/dev/null || { echo "vllm serve exited"; break; }
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8011/health', timeout=2)" 2>/dev/null && break
    sleep 1
  done
  rm -f /tmp/gs/gpu_check.json
  run "${LIMIT:-390}" python3 benchmarks/gpu_check.py --out /tmp/gs --data /tmp/data/searchqa \
    --engine vllm-server --vllm-url http://127.0.0.1:8011 --eval-limit "${EVAL_LIMIT:-30}" --batches 128 "$@" \
    > "$RES/gpu_check_server.log" 2>&1
  echo "server gpu_check exit $?"; stop_server; trap bundle EXIT  # GPU memory back before the next stage
  cp /tmp/gs/gpu_check.json "$RES/gpu_check_server.json" 2>/dev/null
  tail -20 "$RES/serve.log"; tail -30 "$RES/gpu_check_server.log"
  bundle
fi
if has projection; then
  rm -f /tmp/proj/projection.json
  run "${PLIMIT:-300}" python3 benchmarks/projection.py --engine vllm --out /tmp/proj/projection.json \
    > "$RES/projection.log" 2>&1
  echo "projection exit $?"; cp /tmp/proj/projection.json "$RES/" 2>/dev/null; tail -20 "$RES/projection.log"
  bundle
fi
if has eval; then
  if python3 -c "import json; p = json.load(open('/tmp/gc/gpu_check.json'))['paths']; print(p['warm'], p['index'])" \
      > /tmp/gvc/paths 2>/dev/null; then  # (no paths yet when the demo stage was cut short)
    read -r model index < /tmp/gvc/paths
  else
    model=smollm2-135m-instruct index=/tmp/eval-index
    [ -d $index ] || python3 -m searche1 index --corpus /tmp/data/searchqa/corpus.jsonl --out $index \
      > "$RES/eval_index.log" 2>&1
  fi
  for engine in hf vllm; do
    run "${ELIMIT:-240}" python3 -m searche1 eval --model "$model" --index "$index" --engine $engine \
      --data /tmp/data/searchqa/dev --limit "${EVAL_N:-40}" --vllm-kwargs "$(kw)" --out "$RES/eval_$engine.json" \
      > "$RES/eval_$engine.log" 2>&1
    echo "eval $engine exit $?"; tail -14 "$RES/eval_$engine.log"
  done
  python3 -c "import json; r = {e: json.load(open(f'$RES/eval_{e}.json')) for e in ('hf', 'vllm')}; \
print({e: (v['settings']['seconds'], v['average']['em']) for e, v in r.items()})" 2>&1 | tee "$RES/eval_timing.txt"
fi
