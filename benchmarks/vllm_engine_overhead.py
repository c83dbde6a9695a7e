"""Our vLLM engine's own CPU work per token (issue 7), with vLLM replaced by a stub that answers at once: what is left
of a rollout's time when generation costs nothing (prompt rendering, cutting turns, log-prob bookkeeping, decoding
the responses). The stub's tokens are drawn before timing (drawing them inside, as the first version did, charged
~0.2 s of random numbers to the engine). Compare with the H100 figure in benchmarks/results/decode_compare_h100.json
(512 episodes of ~117 tokens, the same shape as here) to see how much of that run was vLLM's.

    python benchmarks/vllm_engine_overhead.py [--episodes 512] [--tokens 117] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import random
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, print_table, repeat_median, rnd, write_results  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=117, help="tokens per episode (one turn, no stop string)")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="its tokenizer is used")
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
                     "seconds": rnd(sec, 3), "us_per_token": rnd(sec / tokens * 1e6, 2)})
    print_table("vLLM engine without vLLM (stub generation), median of 3",
                ["distinct questions", "episodes", "tokens", "s", "µs / token"], [list(r.values()) for r in rows])
    write_results(args.out, {"rows": rows, "model_tokenizer": args.model}, packages=("transformers", "tokenizers"))


if __name__ == "__main__":
    main()
