"""Our vLLM engine's own CPU work per token (issue 7), with vLLM replaced by a stub that answers at once: what is left
of a rollout's time when generation costs nothing (prompt rendering, cutting turns, log-prob bookkeeping, decoding
the responses). The stub's tokens are drawn before timing (drawing them inside, as the first version did, charged
~0.2 s of random numbers to the engine). Compare with the H100 figure in benchmarks/results/decode_compare_h100.json
(512 episodes of ~117 tokens, the same shape as here) to see how much of that run was vLLM's.

With the searchqa data (``--data``, default ../shared/data/searchqa) more rows time search episodes, the shape of
the H100's "512 search episodes" row (HF 3,139 vs vLLM 3,451 tokens/s): each episode searches once for its own
question (BM25 top-3 over the corpus, 64-token passages: retrieval and its blocks' tokens) and then answers; once
with 512 distinct dev questions, once in GRPO groups (``--group`` episodes per question). Until 2026-11-28 every
stub episode searched one fixed query, so its rows are not comparable with the older results.

    python benchmarks/vllm_engine_overhead.py [--episodes 512] [--tokens 117] [--group 5] [--model ...]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import random
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, RESULTS_DIR, print_table, repeat_median, rnd, write_results  # noqa: E402


def search_rows(tok, data: Path, n: int, group: int) -> list[dict]:
    """Episodes that search once, then answer: the stub writes a search turn whose query is the episode's question,
    then a fixed answer turn. Two question mixes: ``n`` distinct dev questions, and GRPO groups (``n // group``
    questions, each ``group`` times: a group asks one query, so its episodes get one block, which the engine
    formats and encodes once). Each once with per-turn batches, once with streamed turns
    (``rollout.vllm_stream_turns``; the stub's ``llm_engine`` finishes a seeded quarter of its requests per step,
    so searches go out in smaller batches)."""
    import random
    import sys
    import tempfile

    from searche1.data.qa import load_qa_files
    from searche1.retrieval.config import RetrievalConfig, make_retriever
    from searche1.retrieval.index import build_index
    from searche1.rollout.tokens import encode, encode_batch
    from searche1.rollout.types import RolloutConfig
    from searche1.rollout.vllm_engine import TurnSample, VLLMEngine

    index = build_index(data / "corpus.jsonl", Path(tempfile.mkdtemp()) / "index", show_progress=False)
    pool = [q for exs in load_qa_files(sorted((data / "dev").glob("*.jsonl"))).values() for q in exs]
    answer = encode(tok, " <answer> x </answer>")

    def mix(distinct: int) -> tuple[list, list[list[int]]]:  # questions and each episode's search turn
        qs = [q for q in (pool * (n // len(pool) + 1))[:distinct] for _ in range(n // distinct)]
        turns = dict(zip((q.question for q in qs), encode_batch(tok, [f" <search> {q.question} </search>"
                                                                      for q in qs])))
        return qs, [turns[q.question] for q in qs]

    class SearchThenAnswer(VLLMEngine):
        search: list[list[int]] = []
        calls = 0

        def _generate(self, reqs):  # every live episode is at the same turn, in episode order: search, then answer
            self.calls += 1
            return [TurnSample(ids, [-0.5] * len(ids), "stop")
                    for ids in (self.search[:len(reqs)] if self.calls == 1 else [answer] * len(reqs))]

    class StubEngine:  # llm_engine for streamed turns: request ids end in the episode and turn index
        def __init__(self, search) -> None:
            self.queue, self.rng, self.search = {}, random.Random(0), search

        def add_request(self, rid, prompt, params) -> None:
            episode, turn = map(int, rid.rsplit("-", 2)[1:])
            self.queue[rid] = answer if turn else self.search[episode]

        def has_unfinished_requests(self) -> bool:
            return bool(self.queue)

        def step(self):
            done = [r for r in self.queue if self.rng.random() < 0.25]
            return [types.SimpleNamespace(request_id=r, finished=True, outputs=[types.SimpleNamespace(
                token_ids=self.queue.pop(r), logprobs=None, finish_reason="stop")]) for r in done]

    # a stand-in vllm module for SamplingParams (the stub engine ignores them)
    sys.modules.setdefault("vllm", types.SimpleNamespace(SamplingParams=lambda **kw: types.SimpleNamespace(**kw)))
    sys.modules.setdefault("vllm.sampling_params", types.SimpleNamespace(
        RequestOutputKind=types.SimpleNamespace(FINAL_ONLY="final_only")))
    retriever = make_retriever(RetrievalConfig(index=index))
    cfg = RolloutConfig(max_turn_tokens=64, max_total_tokens=2048, max_searches=4, topk=3, max_doc_tokens=64,
                        vllm_logprobs=False)
    rows = []
    for distinct in (n, n // group):
        qs, search = mix(distinct)
        for shape, stream in (("search once, then answer", False), ("the same, streamed turns", True)):
            def make():
                engine = SearchThenAnswer(types.SimpleNamespace(llm_engine=StubEngine(search)), tok, retriever,
                                          replace(cfg, vllm_stream_turns=stream))
                engine.search = search
                return engine
            make().run(qs[:8], seed=0)
            sec, _ = repeat_median(lambda: make().run(qs, seed=0), repeats=3)
            eps = make().run(qs, seed=0)
            assert all(e.searches == 1 and e.answer == "x" for e in eps), "the stub's episodes did not search, answer"
            assert [e.queries[0] for e in eps] == [q.question for q in qs], "the episodes asked other queries"
            tokens = len(qs) * len(answer) + sum(map(len, search))
            rows.append({"distinct_questions": len({q.question for q in qs}), "episodes": len(qs), "tokens": tokens,
                         "seconds": rnd(sec, 3), "us_per_token": rnd(sec / tokens * 1e6, 2), "shape": shape})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=117, help="tokens per episode (one turn, no stop string)")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="its tokenizer is used")
    ap.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "searchqa",
                    help="searchqa folder for the search-episode row (skipped if absent)")
    ap.add_argument("--group", type=int, default=5, help="search rows: GRPO group size (episodes per question)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "vllm_engine_overhead.json")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from searche1.data.types import QAExample
    from searche1.models import resolve_model_path
    from searche1.rollout.types import RolloutConfig
    from searche1.rollout.vllm_engine import TurnSample, VLLMEngine

    tok = AutoTokenizer.from_pretrained(str(resolve_model_path(args.model)))
    rng = random.Random(0)

    pool = [rng.randrange(1000, 40000) for _ in range(args.episodes * args.tokens)]
    lps = [-0.5] * len(pool)

    class StubEngine(VLLMEngine):
        def _generate(self, reqs):  # ordinary tokens drawn beforehand, at once, as if the GPU took no time
            return [TurnSample(pool[k * r.max_tokens:(k + 1) * r.max_tokens], lps[:r.max_tokens], "length")
                    for k, r in enumerate(reqs)]

    cfg = RolloutConfig(max_turn_tokens=args.tokens, max_total_tokens=2048, max_searches=0)
    engine = StubEngine(types.SimpleNamespace(), tok, None, cfg)
    rows = []
    for distinct in (args.episodes, args.episodes // 5):  # all questions distinct; GRPO groups of 5
        qs = [QAExample(id=str(i), question=f"Who wrote book number {i % distinct}?", answers=["x"])
              for i in range(args.episodes)]
        engine.run(qs[:8], seed=0)
        sec, _ = repeat_median(lambda: engine.run(qs, seed=0), repeats=3)
        tokens = args.episodes * args.tokens
        rows.append({"distinct_questions": distinct, "episodes": args.episodes, "tokens": tokens,
                     "seconds": rnd(sec, 3), "us_per_token": rnd(sec / tokens * 1e6, 2),
                     "shape": f"one {args.tokens}-token turn, no search"})
    if (args.data / "corpus.jsonl").is_file():
        rows.extend(search_rows(tok, args.data, args.episodes, args.group))
    print_table("vLLM engine without vLLM (stub generation), median of 3",
                ["episodes", "shape", "distinct questions", "tokens", "s", "µs / token"],
                [[r[k] for k in ("episodes", "shape", "distinct_questions", "tokens", "seconds", "us_per_token")]
                 for r in rows])
    write_results(args.out, {"rows": rows, "model_tokenizer": args.model}, packages=("transformers", "tokenizers"))


if __name__ == "__main__":
    main()
