"""The growing KV cache (searche1/rollout/kv_cache.py) against transformers' DynamicCache, on CPU.

1. One decoding step of a batch of 20 rows of SmolLM2-135M after a prefill of L tokens (L = 150, 400, 800, 1600:
   the demo's episodes end near 450, the paper's 4-search episodes near 1,600), ms per step over 20 steps, the two
   caches alternating, median of ``--repeats``; the logits of both must be identical. The prefill is computed once
   per L and copied into each cache under test.
2. End to end: the GRPO rollout of benchmarks/shared_prefix.py (8 searchqa training questions × 5, the demo's
   rollout settings, seeded) with each cache (the engine's ``make_cache`` swapped for ``DynamicCache``), alternating.

Writes benchmarks/results/kv_cache.json.

    python benchmarks/kv_cache.py [--model runs/warmup-smollm2] [--repeats 3] [--threads 2]
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


def prefilled(model, L: int, batch: int, steps: int):
    """Token ids for an L-token prefill plus ``steps`` steps, and the prefill's keys/values per layer (computed once
    and copied into each cache under test, so the long prefills are not repeated)."""
    import torch
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(L)
    ids = torch.randint(100, 40000, (batch, L + steps), generator=g)
    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=ids[:, :L], attention_mask=torch.ones(batch, L, dtype=torch.long), use_cache=True,
              cache=cache, logits_to_keep=1)
    return ids, [(layer.keys, layer.values) for layer in cache.layers]


def decode_steps(model, cache, ids, kv, L: int, steps: int):
    """ms per decoding step after the prefill ``kv`` (written into ``cache`` first), and every step's logits."""
    import time

    import torch

    for i, (k, v) in enumerate(kv):
        cache.update(k.clone(), v.clone(), i)
    batch = ids.shape[0]
    attn = torch.ones(batch, L, dtype=torch.long)
    outs = []
    with torch.no_grad():
        t0 = time.perf_counter()
        for s in range(steps):
            attn = torch.cat([attn, torch.ones(batch, 1, dtype=torch.long)], 1)
            pos = torch.full((batch, 1), L + s)
            out = model(input_ids=ids[:, L + s:L + s + 1], attention_mask=attn, position_ids=pos, use_cache=True,
                        cache=cache, logits_to_keep=1)
            outs.append(out.logits[:, -1])
        dt = (time.perf_counter() - t0) / steps
    return dt * 1000, torch.stack(outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_args(ap)
    ap.add_argument("--lengths", default="150,400,800,1600")
    ap.add_argument("--skip-rollout", action="store_true")
    args = ap.parse_args()

    import torch
    from transformers import DynamicCache

    from searche1.rollout import hf_engine
    from searche1.rollout.kv_cache import make_cache

    tok, model = load_engine_model(args)
    results: dict = {"model": str(args.model), "repeats": args.repeats, "threads": args.threads, "batch": 20,
                     "decode": {}}
    rows = []
    for L in [int(x) for x in args.lengths.split(",")]:
        t: dict[str, list[float]] = {"dynamic": [], "growing": []}
        same = True
        log(f"prefill of {L} tokens × 20 rows")
        ids, kv = prefilled(model, L, 20, 20)
        for r in range(args.repeats):
            log(f"decode after {L} tokens, repeat {r + 1}/{args.repeats}")
            ms_d, lg_d = decode_steps(model, DynamicCache(), ids, kv, L, 20)
            ms_g, lg_g = decode_steps(model, make_cache(), ids, kv, L, 20)
            t["dynamic"].append(ms_d)
            t["growing"].append(ms_g)
            same = same and torch.equal(lg_d, lg_g)
        med = {k: statistics.median(v) for k, v in t.items()}
        results["decode"][L] = {"dynamic_ms": [rnd(x, 1) for x in t["dynamic"]],
                                "growing_ms": [rnd(x, 1) for x in t["growing"]],
                                "median_dynamic_ms": rnd(med["dynamic"], 1), "median_growing_ms": rnd(med["growing"], 1),
                                "speedup": rnd(med["dynamic"] / med["growing"], 3), "identical_logits": same}
        rows.append([L, rnd(med["dynamic"], 1), rnd(med["growing"], 1), rnd(med["dynamic"] / med["growing"], 2),
                     "yes" if same else "NO"])
        write_results(RESULTS_DIR / "kv_cache.json", results, packages=("torch", "transformers"))
    print_table("One decoding step, batch 20 (ms)", ["cached tokens", "DynamicCache", "growing cache", "speed-up",
                                                     "identical logits"], rows,
                note=f"medians of {args.repeats}; {args.threads} threads")

    if args.skip_rollout:
        return
    from searche1.demo import DemoConfig

    retriever, train, _ = searchqa_rollouts(args)
    exs = [q for q in train[:8] for _ in range(5)]
    cfg = replace(DemoConfig().rollout, batch_size=40)
    t = {"dynamic": [], "growing": []}
    eps: dict = {}
    for r in range(args.repeats):
        for name, factory in (("growing", make_cache), ("dynamic", DynamicCache)):
            log(f"GRPO rollout, {name} cache, repeat {r + 1}/{args.repeats}")
            hf_engine.make_cache = factory
            eng = hf_engine.HFEngine(model, tok, retriever, cfg)
            t[name].append(time_call(lambda: eps.__setitem__(name, eng.run(exs, seed=0))))
    hf_engine.make_cache = make_cache
    med = {k: statistics.median(v) for k, v in t.items()}
    same = sum(a.response_ids == b.response_ids for a, b in zip(eps["growing"], eps["dynamic"]))
    results["rollout"] = {"episodes": len(exs), "policy_tokens": sum(e.num_policy_tokens for e in eps["growing"]),
                          "dynamic_s": [rnd(x, 2) for x in t["dynamic"]], "growing_s": [rnd(x, 2) for x in t["growing"]],
                          "median_dynamic_s": rnd(med["dynamic"], 2), "median_growing_s": rnd(med["growing"], 2),
                          "speedup": rnd(med["dynamic"] / med["growing"], 3), "same_episodes": f"{same}/{len(exs)}"}
    write_results(RESULTS_DIR / "kv_cache.json", results, packages=("torch", "transformers"))
    print_table("GRPO rollout, 8 questions × 5 (s)", ["DynamicCache", "growing cache", "speed-up", "same episodes"],
                [[rnd(med["dynamic"], 1), rnd(med["growing"], 1), rnd(med["dynamic"] / med["growing"], 2),
                  f"{same}/{len(exs)}"]], note=f"medians of {args.repeats}, alternating; {args.threads} threads")


if __name__ == "__main__":
    main()
