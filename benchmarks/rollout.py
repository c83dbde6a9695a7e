"""Rollout engine throughput: policy tokens/s of the batched HF engine vs the Search-R1 pattern, on CPU.

Ours (`HFEngine`): a batch of episodes decoded turn by turn with one KV cache, token ids end to end, sampler
log-probs recorded on the way.
Baseline (Search-R1 pattern, reimplemented here): one episode at a time; every turn decodes the episode so far to
text, re-tokenises prompt + response, calls ``model.generate`` (fresh KV cache, stop strings) and appends the
retrieved text. It records no log-probs or masks (Search-R1 recomputes them later), which favours the baseline.

Both run the same model, questions, retriever, sampling temperature and turn limits; the baseline's rate does not
depend on a batch size, so it is measured once and compared with ours at batch 1, 8 and 32.
Writes benchmarks/results/rollout.json.

    python benchmarks/rollout.py [--model PATH_OR_NAME] [--n 32] [--max-turn-tokens 64]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, log, print_table, rnd, write_results  # noqa: E402


def baseline_episode(model, tok, retriever, question: str, cfg, gen_seed: int) -> int:
    """One episode, Search-R1 style. Returns the number of tokens the policy generated."""
    import torch

    from searche1 import protocol

    prompt = protocol.build_prompt(question, tok, chat=cfg.chat, max_searches=cfg.max_searches)
    response = ""
    generated = 0
    searches = 0
    torch.manual_seed(gen_seed)
    for _turn in range(cfg.max_searches + 1):
        enc = tok(prompt + response, return_tensors="pt", add_special_tokens=False)  # re-tokenise everything
        out = model.generate(**enc, max_new_tokens=cfg.max_turn_tokens, do_sample=True, temperature=cfg.temperature,
                             top_p=1.0, top_k=0, stop_strings=list(protocol.TURN_STOP_STRINGS), tokenizer=tok,
                             pad_token_id=tok.pad_token_id)
        new = out[0, enc["input_ids"].shape[1]:]
        generated += int(new.shape[0])
        text = tok.decode(new, skip_special_tokens=True)
        response += text
        action = protocol.parse_turn(text)
        if action.kind != "search" or searches >= cfg.max_searches:
            break
        searches += 1
        hits = retriever.search([action.content], cfg.topk)[0]
        response += protocol.format_information(hits, tok, max_doc_tokens=cfg.max_doc_tokens)
    return generated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=32, help="episodes per measurement (batch 32 uses all)")
    ap.add_argument("--baseline-n", type=int, default=8, help="episodes for the per-episode baseline")
    ap.add_argument("--max-turn-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--out", default=str(RESULTS_DIR / "rollout.json"))
    args = ap.parse_args()

    import torch

    from searche1.data.qa import load_qa
    from searche1.models import ModelConfig, load_policy
    from searche1.paths import cache_dir, searchqa_dir
    from searche1.retrieval.index import ensure_index, load_retriever
    from searche1.rollout.hf_engine import HFEngine
    from searche1.rollout.types import RolloutConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    data = searchqa_dir()
    if data is None:
        print("searchqa data not found (../shared/data/searchqa); nothing to benchmark")
        return
    retriever = load_retriever(ensure_index(data / "corpus.jsonl", cache_dir() / "indexes" / "searchqa-bm25"))
    model, tok = load_policy(ModelConfig(name_or_path=args.model))
    exs = (load_qa(data / "dev" / "nq.jsonl") + load_qa(data / "dev" / "hotpotqa.jsonl"))[::7][: args.n]
    cfg = RolloutConfig(max_turn_tokens=args.max_turn_tokens, temperature=1.0)
    log(f"model {args.model} dtype {model.dtype}, {len(exs)} questions, torch threads {torch.get_num_threads()}")

    rows, res = [], {"ours": {}}
    for bs in (1, 8, 32):
        cfg.batch_size = bs
        n = min(len(exs), max(bs, 4))  # batch 1: 4 episodes one after another
        eng = HFEngine(model, tok, retriever, cfg)
        t0 = time.perf_counter()
        eps = eng.run(exs[:n], seed=0)
        dt = time.perf_counter() - t0
        toks = sum(e.num_policy_tokens for e in eps)
        searches = sum(e.searches for e in eps) / len(eps)
        res["ours"][f"batch{bs}"] = {"episodes": n, "policy_tokens": toks, "seconds": rnd(dt, 2),
                                     "tokens_per_s": rnd(toks / dt, 1), "searches_per_episode": rnd(searches, 2)}
        log(f"ours batch {bs}: {toks} tokens in {dt:.1f}s = {toks / dt:.1f} tok/s")
    t0 = time.perf_counter()
    base_tokens = sum(baseline_episode(model, tok, retriever, e.question, cfg, i)
                      for i, e in enumerate(exs[: args.baseline_n]))
    base_dt = time.perf_counter() - t0
    base_tps = base_tokens / base_dt
    res["baseline_searchr1_pattern"] = {"episodes": args.baseline_n, "policy_tokens": base_tokens,
                                        "seconds": rnd(base_dt, 2), "tokens_per_s": rnd(base_tps, 1)}
    log(f"baseline: {base_tokens} tokens in {base_dt:.1f}s = {base_tps:.1f} tok/s")
    for bs in (1, 8, 32):
        r = res["ours"][f"batch{bs}"]
        r["speedup_vs_baseline"] = rnd(r["tokens_per_s"] / base_tps, 2)
        rows.append([bs, r["episodes"], r["policy_tokens"], r["seconds"], r["tokens_per_s"], r["speedup_vs_baseline"]])
    rows.append(["baseline (per episode)", args.baseline_n, base_tokens, rnd(base_dt, 2), rnd(base_tps, 1), 1.0])
    res["peak_rss_mb"] = rnd(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)
    res["settings"] = {"model": args.model, "dtype": str(model.dtype), "max_turn_tokens": args.max_turn_tokens,
                       "temperature": 1.0, "max_searches": cfg.max_searches, "torch_threads": torch.get_num_threads()}
    print_table("Rollout policy tokens/s (CPU)", ["batch", "episodes", "policy tokens", "s", "tok/s", "× baseline"],
                rows, note=f"peak RSS {res['peak_rss_mb']} MB; model {args.model} ({model.dtype})")
    write_results(args.out, res, packages=["torch", "transformers"])


if __name__ == "__main__":
    main()
