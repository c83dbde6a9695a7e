"""CPU cost per token of vLLM's front end (issue 7): its ``OutputProcessor`` detokenises, checks stop strings and
builds log-prob objects for every generated token; with the colocated engine in-process (``rollout.engine: vllm``)
that runs in the trainer's thread, between GPU steps. Synthetic engine-core outputs shaped like a rollout (``--batch``
requests × ``--tokens`` tokens, one token per request per step) go through it with the settings our engine can use.
Needs vLLM importable, not a GPU (e.g. ``PYTHONPATH=/tmp/site`` after ``scripts/gpu_payload.sh unpack``).

    python benchmarks/vllm_output_cost.py [--model smollm2-135m-instruct] [--batch 512] [--tokens 117]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, print_table, repeat_median, rnd, write_results  # noqa: E402

STOPS = ["</search>", "</answer>"]
SETTINGS = {  # name -> (stop strings, logprobs, detokenize, share of requests with logprobs)
    "stop strings + logprobs=1 (rollout.vllm_logprobs: true)": (STOPS, 1, True, 1.0),
    "stop strings + logprobs=0": (STOPS, 0, True, 1.0),
    "stop strings + logprobs=1 on 1 request in 8 (default: rollout.vllm_logprobs unset)": (STOPS, 1, True, 0.125),
    "stop strings, no logprobs (rollout.vllm_logprobs: false)": (STOPS, None, True, 0.0),
    "no stop strings, no detokenising, logprobs=1": (None, 1, False, 1.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="its tokenizer detokenises")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=117)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "vllm_output_cost.json")
    args = ap.parse_args()
    import numpy as np
    from transformers import AutoTokenizer
    from vllm.sampling_params import RequestOutputKind, SamplingParams
    from vllm.v1.engine import EngineCoreOutput, EngineCoreRequest
    from vllm.v1.engine.output_processor import OutputProcessor
    from vllm.v1.outputs import LogprobsLists

    from searche1.models import resolve_model_path
    from searche1.rollout.types import logprobs_wanted

    tok = AutoTokenizer.from_pretrained(str(resolve_model_path(args.model)))
    B, T = args.batch, args.tokens
    rng = random.Random(0)
    steps = [[rng.randrange(1000, 40000) for _ in range(B)] for _ in range(T)]  # ordinary tokens, no stop

    def run(stop, logprobs, detok, share) -> None:
        op = OutputProcessor(tok, log_stats=False)
        wanted = [logprobs is not None and logprobs_wanted(i, share) for i in range(B)]  # as VLLMEngine picks them
        for i in range(B):
            sp = SamplingParams(max_tokens=T, stop=stop, include_stop_str_in_output=True,
                                logprobs=logprobs if wanted[i] else None,
                                skip_special_tokens=False, detokenize=detok, output_kind=RequestOutputKind.FINAL_ONLY)
            op.add_request(EngineCoreRequest(request_id=str(i), prompt_token_ids=[1, 2, 3], mm_features=None,
                                             sampling_params=sp, pooling_params=None, arrival_time=0.0,
                                             lora_request=None, cache_salt=None, data_parallel_rank=None,
                                             external_req_id=str(i)), prompt=None)
        for s, toks in enumerate(steps):
            lp = None
            if logprobs is not None:  # one batch array per step, sliced per request, as the engine core does
                ids = np.array(toks, dtype=np.int64)[:, None].repeat(logprobs + 1, 1)
                lp = LogprobsLists(ids, np.full(ids.shape, -0.5, dtype=np.float32), np.ones(B, dtype=np.int64))
            op.process_outputs([EngineCoreOutput(request_id=str(i), new_token_ids=[toks[i]],
                                                 new_logprobs=lp.slice_request(i, 1) if wanted[i] else None,
                                                 finish_reason=None if s < T - 1 else 1) for i in range(B)])

    rows = []
    for name, setting in SETTINGS.items():
        sec, _ = repeat_median(lambda: run(*setting), repeats=3, warmup=1)
        rows.append({"setting": name, "seconds": rnd(sec, 3), "us_per_token": rnd(sec / (B * T) * 1e6, 1)})
    print_table(f"vLLM OutputProcessor, {B} requests × {T} tokens, median of 3", ["setting", "s", "µs / token"],
                [list(r.values()) for r in rows])
    write_results(args.out, {"batch": B, "tokens": T, "rows": rows}, packages=("vllm", "torch", "transformers"))


if __name__ == "__main__":
    main()
