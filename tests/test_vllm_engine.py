"""VLLMEngine without vLLM (tests/vllm_fakes.py): a scripted fake ``vllm.LLM`` drives every stop reason; the same
scripts through HFEngine (tiny model, forcing hook) give identical records but for the log-prob values; a whole
turn is cut by the HF engine's per-token rule."""

from __future__ import annotations

import collections
import types

import pytest

from searche1 import protocol
from searche1.config import ConfigError
from searche1.rollout.hf_engine import HFEngine
from searche1.rollout.types import RolloutConfig, StopReason
from searche1.rollout.vllm_engine import VLLMEngine, turn_seed

from tiny import tiny_model
from toy_retriever import OverlapRetriever
from vllm_fakes import FILLER, encode, FakeEngine, FakeLLM, BoomRetriever, ALL_LP, examples, make, spans
from vllm_fakes import assert_logprobs_from_fake
from vllm_fakes import fake_vllm, tok  # noqa: F401 (fixtures; fake_vllm is autouse)


# ------------------------------------------------------------------------------------------------------- episodes


def test_search_then_answer(tok):
    q = "What is the capital of France?"
    turns = [" <search> capital of France </search>", " <answer> Paris </answer>"]
    eng, llm, ret = make(tok, {q: turns})
    (ep,) = eng.run(examples([q]), seed=7)
    assert (ep.stop_reason, ep.queries, ep.answer, ep.turns) == (StopReason.ANSWERED, ["capital of France"], "Paris", 2)
    info = eng.info_ids(OverlapRetriever().search(["capital of France"], eng.cfg.topk)[0])
    parts = spans(ep)
    assert [m for m, _ in parts] == [1, 0, 1]
    assert parts[0][1] == encode(tok, turns[0]) and parts[1][1] == info and parts[2][1] == encode(tok, turns[1])
    assert_logprobs_from_fake(ep)
    assert ep.response_text == turns[0] + tok.decode(info) + turns[1] and protocol.is_valid_format(ep.response_text)
    assert "Paris is the capital of France" in ep.response_text
    assert ret.calls == 1 and llm.calls == 2
    # turn 2 continues from token ids: prompt + turn 1 + block, never re-tokenised text
    (_, t0, ids0, sp0), (_, t1, ids1, sp1) = llm.requests
    assert (t0, t1) == (0, 1) and ids0 == ep.prompt_ids and ids1 == ep.prompt_ids + parts[0][1] + info
    assert (sp0.seed, sp1.seed) == (turn_seed(7, 0, 0), turn_seed(7, 0, 1)) and sp0.seed != sp1.seed
    assert sp0.stop == ["</search>", "</answer>"] and sp0.stop_token_ids == [tok.eos_token_id]
    assert (sp0.logprobs, sp0.temperature, sp0.top_p, sp0.n, sp0.max_tokens) == (1, 1.0, 1.0, 1, 24)
    assert sp0.include_stop_str_in_output is True and sp0.skip_special_tokens is False
    assert (sp0.top_k, sp0.min_p, sp0.repetition_penalty) == (0, 0.0, 1.0)  # neutral, as the HF engine samples


def test_fakes_refuse_what_vllm_020_refuses(fake_vllm):
    """The fakes hold the engine to vLLM 0.20's names (tests/vllm_020_api.json): an unknown SamplingParams or
    vllm.LLM keyword raises as it does there (and load_llm's logprobs_mode fallback does not swallow it)."""
    from searche1.rollout.vllm_colocated import load_llm

    with pytest.raises(TypeError, match="Unexpected keyword argument 'stop_strings'"):
        fake_vllm.SamplingParams(max_tokens=3, stop_strings=["</search>"])
    fake_vllm.LLM = lambda **kw: kw
    assert load_llm("m", enforce_eager=True)["enable_prefix_caching"] is True
    with pytest.raises(TypeError, match="unexpected keyword argument 'prefix_caching'"):
        load_llm("m", prefix_caching=True)
    engine = FakeEngine(None)
    with pytest.raises(TypeError, match="request_id must be a string"):
        engine.add_request(3, {"prompt_token_ids": [1]}, fake_vllm.SamplingParams(output_kind="final_only"))


STOP_REASON_QS = ["What is the capital of France?", "Capital of Germany?", "Where is the Eiffel Tower?", "Danube?",
                  "Python?", "Empty query?", "Boom?", "Too many searches?"]
STOP_REASON_SCRIPTS = {  # with max_searches 2 and BoomRetriever: every stop reason in one batch
    STOP_REASON_QS[0]: [" <search> capital of France </search>", " <answer> Paris </answer>"],
    STOP_REASON_QS[1]: [" <think> easy </think> <answer> Berlin </answer>"],
    STOP_REASON_QS[2]: [" <search> Eiffel Tower </search>", " More. <search> Paris France </search>",
                        " <answer> Paris"],
    STOP_REASON_QS[3]: [" <search> Danube </search>", " I give up<|im_end|>"],
    STOP_REASON_QS[4]: [" <answer> a language"],  # never closes -> turn budget
    STOP_REASON_QS[5]: [" <search> </search>"],  # stop string without a usable action
    STOP_REASON_QS[6]: [" <search> boom boom </search>", " <answer> never </answer>"],
    STOP_REASON_QS[7]: [" <search> a </search>", " <search> b </search>", " <search> c </search>"],
}


def test_every_stop_reason_in_one_batch(tok):
    qs, scripts = STOP_REASON_QS, STOP_REASON_SCRIPTS
    eng, llm, ret = make(tok, scripts, retriever=BoomRetriever(), max_searches=2)
    eps = eng.run(examples(qs), seed=3)
    expected = [  # (stop reason, queries, answer, turns)
        (StopReason.ANSWERED, ["capital of France"], "Paris", 2),
        (StopReason.ANSWERED, [], "Berlin", 1),
        (StopReason.MAX_TOKENS, ["Eiffel Tower", "Paris France"], None, 3),
        (StopReason.PARSE_ERROR, ["Danube"], None, 2),
        (StopReason.MAX_TOKENS, [], None, 1),
        (StopReason.PARSE_ERROR, [], None, 1),
        (StopReason.RETRIEVAL_ERROR, ["boom boom"], None, 1),
        (StopReason.MAX_TURNS, ["a", "b"], None, 3),
    ]
    for ep, want in zip(eps, expected):
        assert (ep.stop_reason, ep.queries, ep.answer, ep.turns) == want, ep.question
        n_blocks = len(ep.queries) - (ep.stop_reason == StopReason.RETRIEVAL_ERROR)
        assert [m for m, _ in spans(ep)] == [1, 0] * n_blocks + [1], ep.question
        assert_logprobs_from_fake(ep)
    assert "index exploded" in eps[6].metrics["retrieval_error"]
    assert eps[3].response_ids[-1] == tok.eos_token_id and eps[3].policy_mask[-1] == 1
    assert len(spans(eps[4])[0][1]) == 24 and len(spans(eps[2])[-1][1]) == 24  # max_turn_tokens
    # one batched retrieval per turn (turn 1 fails as a batch because of 'boom', then goes query by query)
    assert ret.batches[0] == ["capital of France", "Eiffel Tower", "Danube", "boom boom", "a"]
    assert ret.batches[1:6] == [[q] for q in ret.batches[0]]
    assert ret.batches[6:] == [["Paris France", "b"]] and ret.calls == 7
    assert llm.calls == 3
    # per-episode seeds: a function of (run seed, episode index, turn) only
    index = {k: i for i, k in enumerate(llm.scripts)}
    assert all(sp.seed == turn_seed(3, index[k], t) for k, t, _, sp in llm.requests)
    assert len({sp.seed for *_, sp in llm.requests}) == len(llm.requests)


def test_total_budget(tok):
    q = "What is the capital of France?"
    P = len(encode(tok, protocol.build_prompt(q, tok)))
    eng, llm, _ = make(tok, {q: [" <answer> Paris"]}, max_total_tokens=P + 10)
    (ep,) = eng.run(examples([q]))
    assert ep.stop_reason == StopReason.MAX_TOKENS and len(ep.prompt_ids) + len(ep.response_ids) == P + 10
    assert llm.requests[0][3].max_tokens == 10 and llm.requests[0][3].seed is None
    # a search whose block would not fit: stop without inserting it
    turns = [" <search> capital of France </search>", " <answer> Paris </answer>"]
    eng, llm, ret = make(tok, {q: turns}, max_total_tokens=P + 20)
    (ep,) = eng.run(examples([q]))
    assert ep.stop_reason == StopReason.MAX_TOKENS and ep.queries == ["capital of France"] and ret.calls == 1
    assert all(ep.policy_mask) and ep.response_ids == encode(tok, turns[0]) and llm.calls == 1


def test_max_info_tokens_and_max_searches_zero(tok):
    q1, q2 = "What is the capital of France?", "Capital of Germany?"
    scripts = {q1: [" <search> capital of France </search>", " <answer> Paris </answer>"],
               q2: [" <search> Berlin </search>"]}
    (ep, _) = make(tok, scripts, max_info_tokens=16)[0].run(examples([q1, q2]))
    block = [t for t, m in zip(ep.response_ids, ep.policy_mask) if m == 0]
    assert len(block) == 16 and tok.decode(block).endswith("</information>\n\n") and ep.answer == "Paris"
    eps = make(tok, scripts, max_searches=0)[0].run(examples([q1, q2]))
    assert [e.stop_reason for e in eps] == [StopReason.MAX_TURNS] * 2 and all(e.searches == 0 for e in eps)


def test_output_past_a_stop_is_cut_like_hf(tok):
    """If vLLM's output runs past a stop string (or EOS), the turn is cut where HFEngine would have stopped."""
    q = "Capital of Germany?"

    class Overrun(FakeLLM):
        def complete(self, ids, sp):
            sp.stop, sp.stop_token_ids = [], []  # the fake then ignores stops and runs to max_tokens
            return super().complete(ids, sp)

    turns = [" <answer> Berlin </answer> and more text"]
    eng, llm, _ = make(tok, {q: turns}, llm=Overrun(tok, {q: turns}))
    (ep,) = eng.run(examples([q]))
    assert ep.stop_reason == StopReason.ANSWERED and ep.answer == "Berlin"
    assert ep.response_text == " <answer> Berlin </answer>" and len(ep.logprobs) == len(ep.response_ids)


def test_progress_chunks_prompts_and_errors(tok):
    qs = ["What is the capital of France?", "Capital of Germany?", "Danube?"]
    scripts = {q: [" <search> capital </search>", " <answer> x </answer>"] for q in qs}
    whole, llm_a, _ = make(tok, scripts)
    a = whole.run(examples(qs), seed=5)
    seen: list[int] = []
    chunked = VLLMEngine(llm_b := FakeLLM(tok, scripts), tok, OverlapRetriever(), whole.cfg, max_batch=2)
    b = chunked.run(examples(qs), seed=5, progress=seen.append)
    assert sum(seen) == 3 and llm_b.calls == 4
    assert [(e.response_ids, e.logprobs) for e in a] == [(e.response_ids, e.logprobs) for e in b]
    assert sorted(sp.seed for *_, sp in llm_a.requests) == sorted(sp.seed for *_, sp in llm_b.requests)
    # a data-parallel rank holding episodes 2.. passes first_index=2 and draws the same seeds
    VLLMEngine(llm_c := FakeLLM(tok, scripts), tok, OverlapRetriever(), ALL_LP).run(examples(qs)[2:], seed=5,
                                                                                      first_index=2)
    assert [sp.seed for *_, sp in llm_c.requests] == [turn_seed(5, 2, 0), turn_seed(5, 2, 1)]
    # explicit prompt ids replace the agent prompt
    prompt = encode(tok, "Question: Who wrote Hamlet? Answer:")
    llm = FakeLLM(tok, {"Who wrote Hamlet?": [" <answer> Shakespeare </answer>"]}, needle="{}")
    (ep,) = VLLMEngine(llm, tok, OverlapRetriever(), ALL_LP).run(examples(["ignored"]), prompts=[prompt])
    assert ep.prompt_ids == prompt and ep.answer == "Shakespeare"
    # greedy: temperature 0; missing log-probs and constrained decoding are refused loudly
    eng, llm, _ = make(tok, scripts, greedy=True)
    eng.run(examples(qs[:1]))
    assert (llm.requests[0][3].temperature, llm.requests[0][3].top_p) == (0.0, 1.0)
    no_lps = FakeLLM(tok, scripts)
    no_lps.complete = lambda ids, sp, f=no_lps.complete: types.SimpleNamespace(**{**vars(f(ids, sp)), "logprobs": None})
    with pytest.raises(RuntimeError, match="no log-probs"):
        VLLMEngine(no_lps, tok, OverlapRetriever(), ALL_LP).run(examples(qs[:1]))
    with pytest.raises(ConfigError, match="constrained"):
        VLLMEngine(llm, tok, OverlapRetriever(), RolloutConfig(turn_start="constrained"))


def test_turn_seed_and_logprobs_mode_warning(tok, caplog):
    assert turn_seed(None, 0, 0) is None
    seeds = {turn_seed(s, i, t) for s in (0, 1) for i in range(50) for t in range(4)}
    assert len(seeds) == 400 and all(0 <= x < 2**63 for x in seeds)
    llm = FakeLLM(tok, {})
    llm.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(logprobs_mode="raw_logprobs"))
    with caplog.at_level("WARNING"):
        VLLMEngine(llm, tok, OverlapRetriever())
    assert "raw_logprobs" in caplog.text


# ------------------------------------------------------------------------------------------------- parity with HF


class ForceHook:
    """HFEngine logits hook forcing the same scripted turns as FakeLLM (keyed by question)."""

    def __init__(self, tok, scripts: dict[str, list[str]]) -> None:
        self.turns = {q: [encode(tok, t) for t in v] for q, v in scripts.items()}
        self.filler = encode(tok, FILLER)[-1]

    def __call__(self, rows, logits):
        out = logits.clone()
        for b, (ep, turn_tokens) in enumerate(rows):
            turns = self.turns[ep.question]
            turn = turns[ep.turns] if ep.turns < len(turns) else []
            out[b] = float("-inf")
            out[b, turn[len(turn_tokens)] if len(turn_tokens) < len(turn) else self.filler] = 0.0
        return out


def test_same_records_as_hf_engine(tok):
    qs = ["What is the capital of France?", "Capital of Germany?", "Where is the Eiffel Tower?", "Danube?",
          "Python?", "Boom?", "Too many searches?"]
    scripts = {
        qs[0]: [" <search> capital of France </search>", " <answer> Paris </answer>"],
        qs[1]: [" <think> easy </think> <answer> Berlin </answer>"],
        qs[2]: [" <search> Eiffel Tower </search>", " <answer> Paris"],
        qs[3]: [" <search> Danube </search>", " I give up<|im_end|>"],
        qs[4]: [" <search> </search>"],
        qs[5]: [" <search> boom </search>"],
        qs[6]: [" <search> a </search>", " <search> b </search>"],
    }
    cfg = RolloutConfig(max_turn_tokens=20, max_total_tokens=1024, max_searches=1, max_info_tokens=48, batch_size=7,
                        vllm_logprobs=True)
    hf = HFEngine(tiny_model(tok), tok, BoomRetriever(), cfg, logits_hook=ForceHook(tok, scripts)).run(
        examples(qs), seed=0)
    vl = VLLMEngine(FakeLLM(tok, scripts), tok, BoomRetriever(), cfg).run(examples(qs), seed=0)
    fields = ("example_id", "prompt_ids", "response_ids", "policy_mask", "queries", "answer", "stop_reason",
              "response_text", "turns", "metrics")
    assert len({e.stop_reason for e in vl}) == 5
    for h, v in zip(hf, vl):
        assert [getattr(h, f) for f in fields] == [getattr(v, f) for f in fields], v.question
        assert [lp == 0.0 for lp in h.logprobs] == [lp == 0.0 for lp in v.logprobs]
        assert len(h.logprobs) == len(v.logprobs)


def test_cut_turn_matches_the_token_by_token_rule(tok):
    """The vLLM engine cuts a whole turn at once (``StopCheck.first_end``); it must agree with the per-token rule the
    HF engine applies as tokens stream (EOS, then a stop string, then the total budget, then the turn budget)."""
    import random

    from searche1.rollout.tokens import StopCheck
    from searche1.rollout.vllm_engine import TurnSample

    def reference(sample, total, cfg, eos, check):
        turn, lps = [], []
        for t, lp in zip(sample.token_ids, sample.logprobs):
            turn.append(t)
            lps.append(lp)
            total += 1
            if t in eos:
                return turn, lps, "eos"
            if check(turn):
                return turn, lps, "stop"
            if total >= cfg.max_total_tokens or len(turn) >= cfg.max_turn_tokens:
                return turn, lps, "budget"
        return turn, lps, "stop" if sample.finish_reason == "stop" else "budget"

    rng = random.Random(0)
    pieces = [encode(tok, t) for t in (" <search> a b </search>", " </answer>", " words here", "> >", " <answer> x")]
    pieces += [[tok.eos_token_id], [rng.randrange(3, len(tok)) for _ in range(5)]]
    ends = collections.Counter()
    for _ in range(400):
        ids = [t for _ in range(rng.randrange(0, 6)) for t in rng.choice(pieces)]
        cfg = RolloutConfig(max_turn_tokens=rng.randrange(1, 40), max_total_tokens=rng.randrange(20, 80))
        eng = VLLMEngine(FakeLLM(tok, {}), tok, OverlapRetriever(), cfg)
        s = TurnSample(ids, [-0.1 * k for k in range(len(ids))], rng.choice(["stop", "length"]))
        total = rng.randrange(0, 85)
        want = reference(s, total, cfg, eng.eos_ids, StopCheck(tok))
        assert eng._cut_turn(s, total) == want, (ids, total, cfg.max_turn_tokens, cfg.max_total_tokens)
        ends[want[2]] += 1
    assert set(ends) == {"eos", "stop", "budget"}  # every way out was exercised


def test_without_request_seeds_vllm_draws(tok):
    """rollout.vllm_request_seeds: false sends no seeds (vLLM's own generator samples); the episodes are otherwise
    run the same way."""
    qs = ["What is the capital of France?", "Capital of Germany?"]
    scripts = {qs[0]: [" <search> capital of France </search>", " <answer> Paris </answer>"],
               qs[1]: [" <answer> Berlin </answer>"]}
    seeded_llm, free_llm = FakeLLM(tok, scripts), FakeLLM(tok, scripts)
    seeded = VLLMEngine(seeded_llm, tok, OverlapRetriever(), ALL_LP).run(examples(qs), seed=1)
    free = VLLMEngine(free_llm, tok, OverlapRetriever(),
                      RolloutConfig(vllm_logprobs=True, vllm_request_seeds=False)).run(examples(qs), seed=1)
    assert [sp.seed for *_, sp in free_llm.requests] == [None] * 3
    assert [sp.seed for *_, sp in seeded_llm.requests] == [turn_seed(1, 0, 0), turn_seed(1, 1, 0), turn_seed(1, 0, 1)]
    assert [(e.response_ids, e.logprobs, e.answer) for e in free] == [(e.response_ids, e.logprobs, e.answer)
                                                                      for e in seeded]


def test_streamed_turns_give_the_same_episodes(tok):
    """rollout.vllm_stream_turns: requests go in one by one and come back as they finish (the fake engine finishes a
    random share per step), so later turns of some episodes run while others are still on their first; every stop
    reason still comes out as with per-turn batches, with the same records; max_batch caps the episodes in flight;
    an error mid-rollout aborts what is still running."""
    qs, scripts = STOP_REASON_QS, STOP_REASON_SCRIPTS
    fields = ("response_ids", "policy_mask", "logprobs", "queries", "answer", "stop_reason", "turns", "response_text",
              "metrics", "sampler_logprobs")
    batched, _, _ = make(tok, scripts, retriever=BoomRetriever(), max_searches=2)
    want = [[getattr(e, f) for f in fields] for e in batched.run(examples(qs), seed=3)]
    for max_batch in (None, 3):
        eng, llm, ret = make(tok, scripts, retriever=BoomRetriever(), max_searches=2, vllm_stream_turns=True)
        eng.max_batch = max_batch
        seen: list[int] = []
        got = eng.run(examples(qs), seed=3, progress=seen.append)
        assert [[getattr(e, f) for f in fields] for e in got] == want
        assert llm.calls == 0 and sum(seen) == len(qs) and not llm.llm_engine.queue  # all through llm_engine
        assert llm.llm_engine.max_queued == (max_batch or len(qs))
        turns = [int(rid.rsplit("-", 1)[1]) for rid in llm.llm_engine.added]
        assert turns != sorted(turns)  # a later turn went in before an earlier turn of another episode
        assert len(ret.batches) > 3  # searches go out as turns finish, not once per turn
    # a failure mid-rollout: nothing of ours stays queued in the (reused) engine
    eng, llm, _ = make(tok, scripts, retriever=BoomRetriever(), max_searches=2, vllm_stream_turns=True)
    step = llm.llm_engine.step
    llm.llm_engine.step = lambda: step() if llm.llm_engine.steps < 2 else (_ for _ in ()).throw(RuntimeError("gpu"))
    with pytest.raises(RuntimeError, match="gpu"):
        eng.run(examples(qs), seed=3)
    assert llm.llm_engine.aborted and not llm.llm_engine.queue
