"""Evaluation of many small dev sets: one engine call per dataset vs consecutive datasets packed into full batches.

The demo evaluates ``eval_limit`` = 8 dev questions of each of the 7 searchqa datasets, three times (base model,
after the warm-up, after RL). Before 2026-11-28 :func:`searche1.evaluate.evaluate` decoded each dataset in a call of
its own: 7 batches of 8 episodes, each paying every decoding step's weight reads for 8 rows. Now consecutive datasets
join one call until it holds ``batch_size`` questions (the demo's 40): batches of 40 and 16. This script runs the
demo's greedy agent evaluation (its rollout settings, BM25 top-3 over the searchqa corpus) both ways, alternating:
``per_dataset`` calls ``evaluate`` on one dataset at a time (the old behaviour, exactly), ``packed`` on all of them.
The answers must be the same. Writes benchmarks/results/eval_batching.json.

    python benchmarks/eval_batching.py [--model runs/warmup-smollm2] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS_DIR,
    add_engine_args,
    load_engine_model,
    log,
    print_table,
    rnd,
    searchqa_rollouts,
    time_call,
    write_results,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_args(ap)
    ap.set_defaults(repeats=2)
    args = ap.parse_args()

    from searche1.data.qa import load_qa_files
    from searche1.demo import DemoConfig
    from searche1.evaluate import EvalConfig, evaluate
    from searche1.paths import searchqa_dir

    tok, model = load_engine_model(args)
    model.eval()
    retriever, _train, _dev = searchqa_rollouts(args)
    demo = DemoConfig()
    r = demo.rollout
    cfg = EvalConfig(mode="agent", limit=demo.eval_limit, max_searches=r.max_searches, topk=r.topk,
                     max_doc_tokens=r.max_doc_tokens, max_turn_tokens=r.max_turn_tokens, batch_size=r.batch_size)
    data = args.data or searchqa_dir()
    dev = load_qa_files(sorted((data / "dev").glob("*.jsonl")))

    def per_dataset() -> dict:
        return {name: evaluate(model, tok, retriever, {name: exs}, cfg, progress=False)["datasets"][name]
                for name, exs in dev.items()}

    def packed() -> dict:
        return evaluate(model, tok, retriever, dev, cfg, progress=False)["datasets"]

    modes = {"per_dataset": per_dataset, "packed": packed}
    times: dict[str, list[float]] = {m: [] for m in modes}
    out: dict[str, dict] = {}
    for rep in range(args.repeats):
        for mode, fn in modes.items():
            log(f"{mode}, repeat {rep + 1}/{args.repeats}")
            times[mode].append(time_call(lambda: out.__setitem__(mode, fn())))
    same = out["per_dataset"] == out["packed"]
    med = {m: statistics.median(v) for m, v in times.items()}
    n = sum(d["n"] for d in out["packed"].values())
    results = {
        "model": str(args.model), "repeats": args.repeats, "threads": args.threads, "datasets": len(dev),
        "questions": n, "batch_size": cfg.batch_size,
        "calls": {"per_dataset": len(dev), "packed": -(-n // cfg.batch_size)},
        **{f"seconds_{m}": [rnd(t, 2) for t in v] for m, v in times.items()},
        **{f"median_{m}_s": rnd(v, 2) for m, v in med.items()},
        "speedup": rnd(med["per_dataset"] / med["packed"], 3),
        "same_results": same,
        "em": {m: rnd(statistics.mean(d["em"] for d in v.values()), 4) for m, v in out.items()},
    }
    write_results(RESULTS_DIR / "eval_batching.json", results, packages=("torch", "transformers"))
    print_table("Greedy agent evaluation of the demo's dev sets: one call per dataset vs packed batches",
                ["datasets × questions", "per dataset s", "packed s", "speed-up", "same results"],
                [[f"{len(dev)} × {demo.eval_limit}", rnd(med["per_dataset"], 1), rnd(med["packed"], 1),
                  rnd(med["per_dataset"] / med["packed"], 2), same]],
                note=f"HF engine, batch_size {cfg.batch_size}: {len(dev)} calls vs {results['calls']['packed']}; "
                     f"medians of {args.repeats} alternating runs; {args.threads} threads")
    if not same:
        sys.exit("packed and per-dataset evaluations differ")


if __name__ == "__main__":
    main()
