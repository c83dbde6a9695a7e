"""Our vLLM engine against vLLM's real front end, on a CPU (issue 7): a real ``vllm.LLM`` (``load_llm``: LLM,
LLMEngine, InputProcessor, OutputProcessor with its detokeniser and stop strings, log-prob objects) over a fake
engine core that writes scripted turns (search / answer / ramble, random per request seed) and handles max_tokens
and stop ids as the real core does. Checks, before a GPU session spends its minutes on them:

* batched turns (``llm.generate``), streamed turns (``llm_engine.add_request/step``), ``max_batch``, log-probs for
  all / 1 in 8 / no episodes: the same episodes; sampler log-probs where asked, 0 elsewhere;
* ``push_weights`` in-process (``llm_engine.model_executor.driver_worker.model_runner.model``) and by
  ``apply_model`` through vLLM's msgpack RPC encoding (``VLLM_ALLOW_INSECURE_SERIALIZATION=1``, the multiprocessing
  path), then a prefix-cache reset;
* a streamed rollout that fails midway aborts its requests, and ``llm.generate`` works after it.

Needs vLLM 0.20 importable (e.g. ``PYTHONPATH=/tmp/site`` after ``scripts/gpu_payload.sh unpack``, or its source
with its front-end dependencies), no GPU. Exit status 1 on a mismatch.

    PYTHONPATH=/tmp/site:. python benchmarks/vllm_frontend_check.py [--model smollm2-135m-instruct] [--episodes 24]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import types
from dataclasses import replace

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")


class FakeCore:
    """Stands for vLLM's EngineCoreClient: one token per live request per step; a scripted turn (after a few random
    tokens) or random tokens; FinishReason STOP at a stop id, LENGTH at max_tokens."""

    def __init__(self, vllm_config, **_) -> None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(vllm_config.model_config.tokenizer)
        self.vocab = len(tok)
        self.plans = [tok(t, add_special_tokens=False)["input_ids"] for t in
                      (" <search> capital of France </search>", " <answer> Paris </answer>", " no idea")]
        self.reqs: dict = {}
        self.model = types.SimpleNamespace(pushes=[], load_weights=lambda w: self.model.pushes.append(len(list(w))))
        worker = types.SimpleNamespace(model_runner=types.SimpleNamespace(model=self.model))
        self.engine_core = types.SimpleNamespace(model_executor=types.SimpleNamespace(driver_worker=worker))
        self.resets = 0

    def add_request(self, r) -> None:
        rng = random.Random(f"{r.sampling_params.seed}/{len(r.prompt_token_ids)}")
        plan = self.plans[rng.randrange(3)] + ([] if rng.random() < 0.8 else [self.plans[0][0]] * 400)
        self.reqs[r.request_id] = (r, [], rng, plan, rng.randrange(4))

    def get_output(self):
        import numpy as np
        from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs, FinishReason
        from vllm.v1.outputs import LogprobsLists

        outs = []
        for rid, (r, gen, rng, plan, lead) in list(self.reqs.items()):
            sp, k = r.sampling_params, len(gen)
            t = plan[k - lead] if 0 <= k - lead < len(plan) else rng.randrange(100, self.vocab)
            gen.append(t)
            stop = t in (sp.stop_token_ids or []) or t in sp._all_stop_token_ids
            fin = FinishReason.STOP if stop else FinishReason.LENGTH if len(gen) >= sp.max_tokens else None
            lp = None
            if sp.logprobs is not None:  # the sampled token first, then the top ones, as the sampler sends them
                ids = np.array([[t] + list(range(t + 1, t + 1 + sp.logprobs))], dtype=np.int64)
                lps = np.array([[-0.01 * (k + 1)] + [-9.0] * sp.logprobs], dtype=np.float32)
                lp = LogprobsLists(ids, lps, np.ones(1, dtype=np.int64))
            outs.append(EngineCoreOutput(request_id=rid, new_token_ids=[t], new_logprobs=lp, finish_reason=fin,
                                         stop_reason=t if stop else None))
            if fin is not None:
                del self.reqs[rid]
        return EngineCoreOutputs(outputs=outs)

    def abort_requests(self, ids) -> None:
        for i in ids:
            self.reqs.pop(i, None)

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder, run_method

        method, args = MsgpackDecoder().decode(MsgpackEncoder().encode((method, args)))  # as to an engine process
        return [run_method(types.SimpleNamespace(apply_model=lambda fn: fn(self.model)), method, tuple(args), {})]

    def reset_prefix_cache(self, *_) -> bool:
        self.resets += 1
        return True

    def get_supported_tasks(self):
        return ("generate",)

    def dp_engines_running(self) -> bool:
        return False

    def reset_mm_cache(self) -> None:
        pass

    def shutdown(self, *_, **__) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="its config and tokenizer (no weights used)")
    ap.add_argument("--episodes", type=int, default=24)
    args = ap.parse_args()
    import torch
    import vllm
    import vllm.platforms
    from vllm.platforms.cpu import CpuPlatform
    from vllm.v1.engine import core_client

    from searche1.data.types import QAExample
    from searche1.models import resolve_model_path
    from searche1.retrieval.base import Hit
    from searche1.rollout.types import RolloutConfig
    from searche1.rollout.vllm_colocated import load_llm, push_weights
    from searche1.rollout.vllm_engine import VLLMEngine

    vllm.platforms._current_platform = CpuPlatform()  # config checks of a device; the fake core runs nothing
    core_client.EngineCoreClient.make_client = staticmethod(lambda **kw: FakeCore(**kw))
    path = str(resolve_model_path(args.model))
    llm = load_llm(path, max_model_len=2048, dtype="bfloat16", gpu_memory_utilization=0.3, seed=1)
    core = llm.llm_engine.engine_core
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)

    class Retriever:
        def search(self, queries, topk=3):
            return [[Hit(str(i), f'"Doc {i}"\nParis is the capital of France ({q}).', 1.0) for i in range(topk)]
                    for q in queries]

    exs = [QAExample(id=str(i), question=f"Question {i}: what is the capital of France?", answers=["Paris"],
                     dataset="t") for i in range(args.episodes)]
    cfg = RolloutConfig(max_turn_tokens=32, max_total_tokens=1024)
    fails = []
    runs = {}
    for name, c, mb in (("batched", cfg, None), ("streamed", replace(cfg, vllm_stream_turns=True), None),
                        ("streamed, max_batch 5", replace(cfg, vllm_stream_turns=True), 5),
                        ("batched, max_batch 5", cfg, 5), ("all log-probs", replace(cfg, vllm_logprobs=True), None),
                        ("no log-probs", replace(cfg, vllm_logprobs=False), None)):
        eps = VLLMEngine(llm, tok, Retriever(), c, max_batch=mb).run(exs, seed=7)
        runs[name] = [(e.response_ids, e.policy_mask, str(e.stop_reason), e.answer) for e in eps]
        lp_ok = all(any(lp < 0 for lp, m in zip(e.logprobs, e.policy_mask) if m) == e.sampler_logprobs
                    for e in eps if any(e.policy_mask))
        print(f"{name:24s} {sum(e.num_policy_tokens for e in eps):6d} policy tokens, "
              f"{sum(e.searches for e in eps):3d} searches, {sum(e.answer is not None for e in eps):3d} answers, "
              f"{sum(e.sampler_logprobs for e in eps):3d} with sampler log-probs ({'ok' if lp_ok else 'WRONG'})")
        if not lp_ok:
            fails.append(f"{name}: sampler log-probs where not asked, or missing where asked")
        if runs[name] != runs["batched"]:
            fails.append(f"{name}: episodes differ from the batched run")
        if llm.llm_engine.has_unfinished_requests():
            fails.append(f"{name}: requests left in the engine")
    model = torch.nn.Linear(4, 3)
    n = push_weights(llm, model)  # in-process: the model runner's model
    in_process = list(core.model.pushes)
    core.engine_core = types.SimpleNamespace()  # as with VLLM_ENABLE_V1_MULTIPROCESSING=1: no model_executor
    del llm.llm_engine.model_executor
    push_weights(llm, model)  # apply_model, the function pickled through vLLM's RPC encoding
    print(f"push_weights: in-process {in_process}, by apply_model {core.model.pushes[1:]}, prefix-cache resets "
          f"{core.resets}")
    if in_process != [n] or core.model.pushes != [n, n] or core.resets != 2:
        fails.append("push_weights did not reach the model by both paths, or did not reset the prefix cache")
    eng = VLLMEngine(llm, tok, Retriever(), replace(cfg, vllm_stream_turns=True))
    calls, end_turn = [0], eng._end_turn

    def failing(*a):
        calls[0] += 1
        if calls[0] == 5:
            raise KeyboardInterrupt
        return end_turn(*a)

    eng._end_turn = failing
    try:
        eng.run(exs, seed=3)
    except KeyboardInterrupt:
        pass
    left = llm.llm_engine.has_unfinished_requests()
    out = llm.generate([{"prompt_token_ids": [1, 2, 3]}], vllm.SamplingParams(max_tokens=4), use_tqdm=False)
    after = len(out[0].outputs[0].token_ids)
    print(f"streamed rollout failing midway: requests left {left}; generate afterwards: {after} tokens")
    if left or after != 4:
        fails.append("a failed streamed rollout left requests behind, or broke generate")
    print("\n".join(["MISMATCH: " + f for f in fails] or ["all checks passed (vllm " + vllm.__version__ + ")"]))
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
