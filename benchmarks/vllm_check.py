"""vLLM engine check on a GPU (issue 7): does a colocated ``vllm.LLM`` start with these keywords, do pushed weights
reach it, and how far are its sampler log-probs from the trainer's? Writes ``--out/vllm_check.json`` and, for the
scripts that follow, ``--out/vllm_kwargs.json``: the keywords that started (``--kwargs`` as given, else the same
with ``enforce_eager: true``, i.e. no torch.compile / CUDA graphs).

    python benchmarks/vllm_check.py --model DIR --out OUT [--kwargs JSON]

1. start: ``load_llm`` (processed log-probs, prefix caching) in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``);
2. greedy continuations of ``--prompts`` chat prompts (64 tokens each);
3. push the HF model's weights with noise added (``push_weights``): the continuations must change; push the original
   weights back: they must equal step 2's again (and the prefix cache must not serve stale blocks);
4. log-prob gap: the HF model (bf16, same weights) re-scores step 2's tokens; mean and max |Δ log p| against vLLM's.

``--launcher`` (run it under ``torchrun --nproc_per_node 1``): what a rank of a multi-GPU run does, on one GPU. It
first opens the trainer's process group as :func:`searche1.distributed.init_distributed` does on GPUs (the current
device ``cuda:LOCAL_RANK``, backend ``cpu:gloo,cuda:nccl``), checks a CPU and a CUDA all-reduce and an object gather
on it, then builds vLLM with ``distributed_executor_backend="external_launcher"`` on top of that group (what
:func:`searche1.rollout.factory.launcher_kwargs` adds under several ranks) and runs steps 2-4 through it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, rnd  # noqa: E402


def process_group_check() -> dict:
    """Open the trainer's process group from torchrun's environment, as init_distributed does on GPUs, and check
    that a CPU tensor, a CUDA tensor and a Python object each go through it."""
    import torch

    from searche1.distributed import process_group_backend

    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if k not in os.environ:
            sys.exit(f"--launcher: {k} is not set (fix: run under torchrun --nproc_per_node 1)")
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    backend = process_group_backend("cuda")
    t0 = time.perf_counter()
    torch.distributed.init_process_group(backend=backend)
    cpu, cuda = torch.ones(3, dtype=torch.float64), torch.ones(3, device="cuda")
    torch.distributed.all_reduce(cpu)
    torch.distributed.all_reduce(cuda)
    objs: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(objs, {"rank": torch.distributed.get_rank()})
    torch.distributed.barrier()
    return {"backend": backend, "world": torch.distributed.get_world_size(), "cpu_all_reduce": cpu.tolist(),
            "cuda_all_reduce": cuda.tolist(), "gathered": objs, "seconds": rnd(time.perf_counter() - t0, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="local HF folder or smollm2-135m-instruct")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--kwargs", default="{}", help="JSON: extra vllm.LLM keywords (rollout.vllm_kwargs)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--launcher", action="store_true", help="under torchrun: the trainer's process group first, "
                    "then vLLM's external_launcher executor on it (module docstring)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch
    import vllm
    from vllm import SamplingParams

    from searche1.models import ModelConfig, load_policy, resolve_model_path
    from searche1.rollout.vllm_colocated import load_llm, push_weights

    path = str(resolve_model_path(args.model))
    res: dict = {"vllm": vllm.__version__, "torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
    name = "vllm_check_launcher.json" if args.launcher else "vllm_check.json"
    save = lambda: (args.out / name).write_text(json.dumps(res, indent=1))  # noqa: E731
    extra = {}
    if args.launcher:
        res["process_group"] = process_group_check()
        save()
        extra = {"distributed_executor_backend": "external_launcher"}
    llm, errors = None, []
    for kw in ({**json.loads(args.kwargs), **extra}, {**json.loads(args.kwargs), **extra, "enforce_eager": True}):
        t0 = time.perf_counter()
        try:
            llm = load_llm(path, gpu_memory_utilization=0.3, dtype="bfloat16", max_model_len=2048, **kw)
        except Exception as e:  # noqa: BLE001  (reported, then the eager fallback is tried)
            errors.append(f"{kw}: {type(e).__name__}: {e}"[:2000])
            log(f"vLLM did not start with {kw}: {e}")
            continue
        res.update(kwargs=kw, start_s=rnd(time.perf_counter() - t0, 1))
        (args.out / "vllm_kwargs.json").write_text(json.dumps(kw))
        break
    res["start_errors"] = errors
    save()
    if llm is None:
        sys.exit("vLLM did not start")

    model, tok = load_policy(ModelConfig(name_or_path=path, device="cuda", dtype="bfloat16"))
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"Name {k + 2} facts about the number {k}."}],
                                       add_generation_prompt=True, tokenize=False) for k in range(args.prompts)]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    greedy = SamplingParams(temperature=0.0, max_tokens=64, logprobs=1, ignore_eos=True)

    def generate():
        outs = llm.generate([{"prompt_token_ids": p} for p in ids], greedy, use_tqdm=False)
        toks = [list(o.outputs[0].token_ids) for o in outs]
        lps = [[d[t].logprob for t, d in zip(tt, o.outputs[0].logprobs)] for tt, o in zip(toks, outs)]
        return toks, lps

    t0 = time.perf_counter()
    first, first_lps = generate()
    res["greedy_s"] = rnd(time.perf_counter() - t0, 2)
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * p.float().std().to(p.dtype) * 0.5)
    t0 = time.perf_counter()
    res["pushed_tensors"] = push_weights(llm, model)
    res["push_s"] = rnd(time.perf_counter() - t0, 3)
    noisy, _ = generate()
    res["noisy_weights_changed_outputs"] = sum(a != b for a, b in zip(first, noisy)) / len(first)
    model.load_state_dict(saved)
    push_weights(llm, model)
    back, _ = generate()
    res["restored_weights_same_outputs"] = sum(a == b for a, b in zip(first, back)) / len(first)
    save()

    gaps = []
    with torch.no_grad():
        for p, t, lp in zip(ids, first, first_lps):
            x = torch.tensor([p + t], device="cuda")
            logits = model(x).logits[0, len(p) - 1:-1].float()
            hf = torch.log_softmax(logits, -1).gather(-1, torch.tensor(t, device="cuda")[:, None])[:, 0]
            gaps.append((hf - torch.tensor(lp, device="cuda")).abs())
    gap = torch.cat(gaps)
    res["logprob_gap"] = {"mean": rnd(gap.mean().item(), 5), "p99": rnd(gap.quantile(0.99).item(), 4),
                          "max": rnd(gap.max().item(), 4), "tokens": gap.numel()}
    save()
    print(json.dumps(res, indent=1))
    ok = res["noisy_weights_changed_outputs"] > 0.5 and res["restored_weights_same_outputs"] > 0.9
    sys.exit(0 if ok else f"push_weights check failed: {res}")


if __name__ == "__main__":
    main()
