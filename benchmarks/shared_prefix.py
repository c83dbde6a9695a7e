"""The HF engine's shared-prefix prefill (``rollout.shared_prefix``) against a full prefill of every prompt, on CPU.

The agent prompt is ~90% instructions that every question shares (SmolLM2: 132 of ~142 tokens), and a GRPO batch
repeats each question's prompt G times, so prefilling each distinct prompt once and their common prefix once per
batch, instead of every prompt per episode, saves prefill work in every rollout and evaluation. Two
shapes, the demo's settings (searchqa, BM25 top-3, 64-token passages, 48 tokens per turn, ≤ 4 searches):

* ``grpo``: 8 training questions × G = 5 rollouts in one batch of 40, temperature 1, seeded;
* ``eval``: 32 distinct dev questions, greedy, one batch of 32.

The two settings alternate (on, off, on, off, ...) and the medians are compared; the episodes must be the same
token for token (same seed; greedy), which the script checks and reports. Writes
benchmarks/results/shared_prefix.json.

    python benchmarks/shared_prefix.py [--model runs/warmup-smollm2] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
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
    args = ap.parse_args()

    from searche1.demo import DemoConfig
    from searche1.rollout.hf_engine import HFEngine
    from searche1.scoring import shared_prefix_len
    from searche1.rollout.tokens import prompt_batch

    tok, model = load_engine_model(args)
    retriever, train, dev = searchqa_rollouts(args)
    base = DemoConfig().rollout
    shapes = {
        "grpo": ([q for q in train[:8] for _ in range(5)], replace(base, batch_size=40), 0),
        "eval": (dev[:32], replace(base, batch_size=32, greedy=True), None),
    }
    results: dict = {"model": str(args.model), "repeats": args.repeats, "threads": args.threads, "shapes": {}}
    rows = []
    for name, (exs, cfg, seed) in shapes.items():
        prompts = prompt_batch(tok, [e.question for e in exs], cfg)
        shared = shared_prefix_len(prompts)
        times: dict[bool, list[float]] = {True: [], False: []}
        eps: dict[bool, list] = {}
        for r in range(args.repeats):
            for on in (True, False):
                log(f"{name}: shared_prefix={on}, repeat {r + 1}/{args.repeats}")
                eng = HFEngine(model, tok, retriever, replace(cfg, shared_prefix=on))
                times[on].append(time_call(lambda: eps.__setitem__(on, eng.run(exs, seed=seed))))
        same = [a.response_ids == b.response_ids for a, b in zip(eps[True], eps[False])]
        lp_gap = max((abs(x - y) for a, b in zip(eps[True], eps[False]) if a.response_ids == b.response_ids
                      for x, y in zip(a.logprobs, b.logprobs)), default=0.0)
        med = {on: statistics.median(t) for on, t in times.items()}
        tokens = sum(e.num_policy_tokens for e in eps[True])
        results["shapes"][name] = {
            "episodes": len(exs), "prompt_tokens_mean": rnd(sum(map(len, prompts)) / len(prompts), 1),
            "shared_prefix_tokens": shared, "policy_tokens": tokens,
            "searches": rnd(sum(e.searches for e in eps[True]) / len(exs), 2),
            "seconds_on": [rnd(t, 2) for t in times[True]], "seconds_off": [rnd(t, 2) for t in times[False]],
            "median_on_s": rnd(med[True], 2), "median_off_s": rnd(med[False], 2),
            "speedup": rnd(med[False] / med[True], 3),
            "same_episodes": f"{sum(same)}/{len(same)}", "max_logprob_gap": rnd(lp_gap, 7),
        }
        rows.append([name, len(exs), shared, rnd(med[False], 1), rnd(med[True], 1), rnd(med[False] / med[True], 2),
                     f"{sum(same)}/{len(same)}", f"{lp_gap:.1e}"])
        write_results(RESULTS_DIR / "shared_prefix.json", results, packages=("torch", "transformers"))
    print_table("Shared-prefix prefill (HF engine, CPU)",
                ["shape", "episodes", "shared prefix tokens", "full prefill s", "shared prefix s", "speed-up",
                 "same episodes", "max log-prob gap"], rows,
                note=f"medians of {args.repeats} alternating runs; {args.threads} threads")


if __name__ == "__main__":
    main()
