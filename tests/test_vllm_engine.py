"""VLLMEngine without vLLM: a scripted fake ``vllm.LLM`` (and a fake ``vllm`` module) drives every stop reason; the
same scripts through HFEngine (tiny model, forcing hook) give identical records but for the log-prob values; the
server client runs on ``httpx.MockTransport``, ``push_weights`` on fake engines. Not shown: real vLLM behaviour."""

from __future__ import annotations

import collections
import itertools
import json
import math
import os
import sys
import types
from pathlib import Path

import httpx
import pytest
import torch

from searche1 import protocol
from searche1.config import ConfigError
from searche1.data.types import QAExample
from searche1.rollout.hf_engine import HFEngine
from searche1.rollout.types import DEFAULT_VLLM_LOGPROB_FRACTION, Episode, RolloutConfig, StopReason, logprobs_wanted
from searche1.rollout.vllm_engine import (LOGPROBS_MODE, VLLMEngine, VLLMServerClient, load_llm, push_weights,
                                          turn_seed)
from tiny import tiny_model, tiny_tokenizer
from toy_retriever import OverlapRetriever

FILLER = " the"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


FakeSamplingParams = types.SimpleNamespace  # keyword arguments become attributes, like SamplingParams


@pytest.fixture(autouse=True)
def fake_vllm(monkeypatch):
    """A stand-in ``vllm`` module, so the engine's lazy ``from vllm import SamplingParams`` works."""
    mod = types.ModuleType("vllm")
    mod.SamplingParams = FakeSamplingParams
    mod.__version__ = "0.0-fake"
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setattr("searche1.rollout.factory._COLOCATED", {})  # no engine from another test's fake vLLM
    return mod


Logprob = collections.namedtuple("Logprob", "logprob rank decoded_token", defaults=(None, None))  # like vLLM's


def fake_lp(turn: int, k: int) -> float:
    return -(0.5 + 0.1 * turn + 0.01 * k)


class FakeLLM:
    """Scripted ``vllm.LLM``: ``scripts[question]`` lists turn texts (the episode is found by ``needle`` in its
    prompt, its turn by the information blocks after it); turn k emits the tokens of text k, then FILLER forever,
    and stops like vLLM (after the token completing a stop string, at a stop token id, or at max_tokens).
    Log-probs are ``fake_lp(turn, position)``, next to a distractor entry as ``logprobs=1`` returns."""

    def __init__(self, tok, scripts: dict[str, list[str]], needle: str = "Question: {}") -> None:
        self.tok = tok
        self.scripts = {needle.format(q): [encode(tok, t) for t in turns] for q, turns in scripts.items()}
        self.filler = encode(tok, FILLER)[-1]
        self.requests: list[tuple[str, int, list[int], FakeSamplingParams]] = []  # (key, turn, prompt ids, params)
        self.calls = 0

    def complete(self, ids: list[int], sp) -> types.SimpleNamespace:
        text = self.tok.decode(ids)
        key = next(k for k in self.scripts if k in text)
        turn = text[text.index(key):].count(protocol.INFO_CLOSE)
        self.requests.append((key, turn, list(ids), sp))
        script = self.scripts[key][turn] if turn < len(self.scripts[key]) else []
        out, finish = [], "length"
        for k in range(sp.max_tokens):
            out.append(script[k] if k < len(script) else self.filler)
            if out[-1] in sp.stop_token_ids or any(s in self.tok.decode(out) for s in sp.stop):
                finish = "stop"
                break
        lps = [{t: Logprob(fake_lp(turn, k), 1), t + 1: Logprob(-9.0, 2)} for k, t in enumerate(out)]
        return types.SimpleNamespace(token_ids=tuple(out), logprobs=None if sp.logprobs is None else lps,
                                     finish_reason=finish, stop_reason=None)

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls += 1
        assert isinstance(sampling_params, list) and len(sampling_params) == len(prompts)
        return [types.SimpleNamespace(prompt_token_ids=p["prompt_token_ids"],
                                      outputs=[self.complete(p["prompt_token_ids"], sp)])
                for p, sp in zip(prompts, sampling_params)]


class BoomRetriever(OverlapRetriever):
    """Any batch holding a query with 'boom' fails (the engine then retries one by one)."""

    def search(self, queries, topk=3):
        if any("boom" in q for q in queries):
            self.calls += 1
            self.batches.append(list(queries))
            raise RuntimeError("index exploded")
        return super().search(queries, topk)


ALL_LP = RolloutConfig(vllm_logprobs=True)  # vLLM returns the sampler's log-probs for every episode


def examples(questions: list[str]) -> list[QAExample]:
    return [QAExample(id=f"q{i}", question=q, answers=["x"], dataset="toy") for i, q in enumerate(questions)]


def make(tok, scripts, retriever=None, llm=None, **cfg) -> tuple[VLLMEngine, FakeLLM, OverlapRetriever]:
    llm = llm or FakeLLM(tok, scripts)
    retriever = retriever or OverlapRetriever()
    c = RolloutConfig(**{"max_turn_tokens": 24, "max_total_tokens": 1024, "vllm_logprobs": True, **cfg})
    return VLLMEngine(llm, tok, retriever, c), llm, retriever


def spans(ep: Episode) -> list[tuple[int, list[int]]]:
    """Runs of equal policy mask: [(mask, ids), ...]."""
    runs = itertools.groupby(zip(ep.response_ids, ep.policy_mask), key=lambda x: x[1])
    return [(m, [t for t, _ in run]) for m, run in runs]


def assert_logprobs_from_fake(ep: Episode) -> None:
    """Policy tokens carry fake_lp(turn, position in turn); inserted tokens 0."""
    assert len(ep.response_ids) == len(ep.policy_mask) == len(ep.logprobs)
    turn = pos = 0
    for m, ids in spans(ep):
        got = ep.logprobs[pos : pos + len(ids)]
        assert got == ([fake_lp(turn, k) for k in range(len(ids))] if m else [0.0] * len(ids))
        turn += 0 if m else 1
        pos += len(ids)


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


def test_every_stop_reason_in_one_batch(tok):
    qs = ["What is the capital of France?", "Capital of Germany?", "Where is the Eiffel Tower?", "Danube?",
          "Python?", "Empty query?", "Boom?", "Too many searches?"]
    scripts = {
        qs[0]: [" <search> capital of France </search>", " <answer> Paris </answer>"],
        qs[1]: [" <think> easy </think> <answer> Berlin </answer>"],
        qs[2]: [" <search> Eiffel Tower </search>", " More. <search> Paris France </search>", " <answer> Paris"],
        qs[3]: [" <search> Danube </search>", " I give up<|im_end|>"],
        qs[4]: [" <answer> a language"],  # never closes -> turn budget
        qs[5]: [" <search> </search>"],  # stop string without a usable action
        qs[6]: [" <search> boom boom </search>", " <answer> never </answer>"],
        qs[7]: [" <search> a </search>", " <search> b </search>", " <search> c </search>"],
    }
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


# ------------------------------------------------------------------------------------------------------- server


def mock_server(tok, scripts, with_token_ids: bool, log: list[dict]):
    fake = FakeLLM(tok, scripts)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tiny"}]})
        body = json.loads(request.content)
        log.append(body)
        sp = FakeSamplingParams(**{k: body[k] for k in ("max_tokens", "stop", "stop_token_ids", "seed", "logprobs")})
        c = fake.complete(body["prompt"], sp)
        lp = None if c.logprobs is None else {  # asked for none: none come back (nor ids through them)
            "tokens": [f"token_id:{t}" for t in c.token_ids],
            "token_logprobs": [d[t].logprob for t, d in zip(c.token_ids, c.logprobs)], "top_logprobs": None}
        choice = {"index": 0, "text": tok.decode(list(c.token_ids)), "logprobs": lp, "finish_reason": c.finish_reason}
        if with_token_ids:
            choice["token_ids"] = list(c.token_ids)
            if lp is not None:
                lp["tokens"] = [tok.decode([t]) for t in c.token_ids]
        return httpx.Response(200, json={"choices": [choice]})

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("with_token_ids", [False, True])
def test_server_client_gives_the_same_episodes(tok, with_token_ids):
    qs = ["What is the capital of France?", "Capital of Germany?", "Danube?"]
    scripts = {qs[0]: [" <search> capital of France </search>", " <answer> Paris </answer>"],
               qs[1]: [" <answer> Berlin </answer>"], qs[2]: [" <search> Danube </search>", " no idea<|im_end|>"]}
    bodies: list[dict] = []
    client = VLLMServerClient("localhost:8000/v1", transport=mock_server(tok, scripts, with_token_ids, bodies),
                              concurrency=2)
    served = VLLMEngine(client, tok, OverlapRetriever(), ALL_LP).run(examples(qs), seed=1)
    local = VLLMEngine(FakeLLM(tok, scripts), tok, OverlapRetriever(), ALL_LP).run(examples(qs), seed=1)
    fields = ("response_ids", "policy_mask", "logprobs", "queries", "answer", "stop_reason", "turns")
    assert [[getattr(e, f) for f in fields] for e in served] == [[getattr(e, f) for f in fields] for e in local]
    assert client.base_url == "http://localhost:8000" and len(bodies) == 5
    b = bodies[0]
    assert b["model"] == "tiny" and isinstance(b["prompt"], list) and all(isinstance(t, int) for t in b["prompt"])
    assert b["logprobs"] == 1 and b["return_tokens_as_token_ids"] and b["stop"] == ["</search>", "</answer>"]
    assert {x["seed"] for x in bodies} == {turn_seed(1, i, t) for i, t in [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1)]}


def test_server_reload_weights(tok):
    def client(answers: dict[str, int]) -> tuple[VLLMServerClient, list]:
        calls: list = []

        def handler(request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content) if request.content else None
            calls.append((request.url.path, body))
            key = request.url.path + ("" if body is None else f":{body['method']}" + (":kw" * ("kwargs" in body)))
            return httpx.Response(answers.get(key, 200), text="nope")

        return VLLMServerClient("http://h:1", model="m", transport=httpx.MockTransport(handler), retries=0), calls

    c, calls = client({})
    c.reload_weights("/ckpt/step10")
    assert calls == [("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": "/ckpt/step10"}}),
                     ("/reset_prefix_cache", None)]
    c, calls = client({"/collective_rpc:reload_weights:kw": 500})  # older vLLM: reload_weights() takes no path
    c.reload_weights("/ckpt/step10")
    assert [b and b["method"] for _, b in calls] == ["reload_weights", "update_config", "reload_weights", None]
    assert calls[1][1]["args"] == [{"model_config": {"model": "/ckpt/step10"}}]
    c, _ = client({"/collective_rpc:reload_weights:kw": 404})
    with pytest.raises(RuntimeError, match="VLLM_SERVER_DEV_MODE=1"):
        c.reload_weights("/ckpt")


# -------------------------------------------------------------------------------------------------- push weights


def fake_colocated(**methods) -> tuple[types.SimpleNamespace, dict]:
    """A fake LLM (counting prefix-cache resets) and the dict its fake vLLM model's ``load_weights`` fills."""
    loaded: dict[str, torch.Tensor] = {}
    llm = types.SimpleNamespace(resets=0, vllm_model=types.SimpleNamespace(load_weights=lambda w: loaded.update(w)))
    llm.reset_prefix_cache = lambda: setattr(llm, "resets", llm.resets + 1)
    for name, make_method in methods.items():
        setattr(llm, name, make_method(llm.vllm_model))
    return llm, loaded


def test_push_weights_paths(fake_vllm):
    model = torch.nn.Linear(3, 2)
    compiled = types.SimpleNamespace(_orig_mod=model, state_dict=lambda: {"wrapped": torch.zeros(1)})
    # in-process model (V0, V1 without multiprocessing), behind a torch.compile wrapper
    llm, loaded = fake_colocated(llm_engine=lambda m: types.SimpleNamespace(model_executor=types.SimpleNamespace(
        driver_worker=types.SimpleNamespace(model_runner=types.SimpleNamespace(model=m)))))
    assert push_weights(llm, compiled) == 2 and llm.resets == 1
    assert set(loaded) == {"weight", "bias"} and torch.equal(loaded["weight"], model.weight)
    # apply_model (newer vLLM); collective_rpc with a function of the worker
    for methods in ({"apply_model": lambda m: lambda fn: [fn(m)]},
                    {"collective_rpc": lambda m: lambda fn: [fn(types.SimpleNamespace(get_model=lambda: m))]}):
        llm, loaded = fake_colocated(**methods)
        push_weights(llm, model)
        assert set(loaded) == {"weight", "bias"} and llm.resets == 1
    with pytest.raises(RuntimeError, match=r"vllm 0\.0-fake"):
        push_weights(fake_colocated()[0], model)


def test_load_llm_requests_processed_logprobs(fake_vllm):
    made: list[dict] = []

    class LLM:
        def __init__(self, **kw):
            if fake_vllm.old and "logprobs_mode" in kw:
                raise TypeError("EngineArgs.__init__() got an unexpected keyword argument 'logprobs_mode'")
            made.append(kw)

    fake_vllm.LLM, fake_vllm.old = LLM, False
    load_llm("m", gpu_memory_utilization=0.3)
    assert made[-1] == {"model": "m", "gpu_memory_utilization": 0.3, "logprobs_mode": LOGPROBS_MODE,
                        "enable_prefix_caching": True}
    fake_vllm.old = True
    load_llm("m")
    assert "logprobs_mode" not in made[-1]


def test_make_engine_passes_vllm_kwargs(fake_vllm, tok, monkeypatch, tmp_path):
    """rollout.vllm_kwargs reach vllm.LLM and may override the defaults; the colocated engine runs in process."""
    from searche1.rollout.factory import make_engine

    made: list[dict] = []
    fake_vllm.LLM = lambda **kw: made.append(kw) or types.SimpleNamespace()
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the config decides, not a stale export
    model = types.SimpleNamespace(generation_config=types.SimpleNamespace(eos_token_id=[7, 8]))
    cfg = RolloutConfig(engine="vllm", max_total_tokens=512,
                        vllm_kwargs={"enforce_eager": True, "attention_config": {"backend": "TRITON_ATTN"},
                                     "gpu_memory_utilization": 0.2})
    engine, sync, exact = make_engine(cfg, model, tok, None, model_path=tmp_path, sync_dir=tmp_path, device="cuda")
    assert made == [{"model": str(tmp_path), "gpu_memory_utilization": 0.2, "max_model_len": 512,
                     "dtype": "bfloat16", "enforce_eager": True, "attention_config": {"backend": "TRITON_ATTN"},
                     "logprobs_mode": LOGPROBS_MODE, "enable_prefix_caching": True}]
    assert not exact and {7, 8} <= engine.eos_ids and os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    # vLLM's engine in its own process: weights then go by RPC, which needs pickled functions
    monkeypatch.delenv("VLLM_ALLOW_INSECURE_SERIALIZATION", raising=False)
    make_engine(RolloutConfig(engine="vllm", vllm_multiprocessing=True), model, tok, None, model_path=tmp_path,
                sync_dir=tmp_path, device="cuda")
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] == "1"


def test_make_engine_seeds_a_new_vllm_engine_only(fake_vllm, tok, tmp_path):
    """The run's seed reaches vllm.LLM (its own generator samples requests without seeds); a later phase with
    another seed reuses the engine (the seed is not part of its shape); vllm_kwargs may override it."""
    from searche1.rollout.factory import make_engine

    made: list[dict] = []
    fake_vllm.LLM = lambda **kw: made.append(kw) or types.SimpleNamespace()
    model = types.SimpleNamespace(generation_config=None)
    kw = dict(model_path=tmp_path, sync_dir=tmp_path, device="cuda")
    make_engine(RolloutConfig(engine="vllm"), model, tok, None, seed=5001, **kw)
    make_engine(RolloutConfig(engine="vllm"), model, tok, None, seed=7000, **kw)
    make_engine(RolloutConfig(engine="vllm", vllm_kwargs={"seed": 3, "enforce_eager": True}), model, tok, None,
                seed=7000, **kw)
    assert [m["seed"] for m in made] == [5001, 3]


class RandomLLM:
    """A colocated ``vllm.LLM`` stand-in for a training run: each request gets seeded random tokens; the in-process
    model (``llm_engine...model_runner.model``) records every weight push and the generate calls before it."""

    def __init__(self, vocab: int) -> None:
        self.vocab, self.events = vocab, []  # ("push", {name: tensor}) | ("generate", n)
        model = types.SimpleNamespace(load_weights=lambda w: self.events.append(
            ("push", {k: v.detach().clone() for k, v in w})))
        self.llm_engine = types.SimpleNamespace(model_executor=types.SimpleNamespace(
            driver_worker=types.SimpleNamespace(model_runner=types.SimpleNamespace(model=model))))

    def reset_prefix_cache(self) -> None:
        pass

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.events.append(("generate", len(prompts)))
        outs = []
        for sp in sampling_params:
            g = torch.Generator().manual_seed(sp.seed)
            ids = torch.randint(3, self.vocab, (sp.max_tokens,), generator=g).tolist()
            lps = None if sp.logprobs is None else [{t: Logprob(-1.0, 1)} for t in ids]  # like vLLM
            c = types.SimpleNamespace(token_ids=ids, logprobs=lps, finish_reason="length")
            outs.append(types.SimpleNamespace(outputs=[c]))
        return outs


def test_grpo_with_colocated_vllm_reuses_the_engine_and_pushes_first(fake_vllm, tmp_path):
    """Two GRPO runs in one process with rollout.engine: vllm (a pipeline's two GRPO phases): one engine is built;
    each run pushes its starting weights before its first rollout (the second run starts from the model folder, not
    from the weights the first run left in the engine) and its new weights after every step."""
    from test_train import make_config, parity_reward, weights

    from searche1.rollout import factory
    from searche1.train import run_grpo

    built = []

    def LLM(**kw):  # noqa: N802  (stands for vllm.LLM)
        built.append(kw)
        return RandomLLM(vocab=550)

    fake_vllm.LLM = LLM
    cfg = make_config(tmp_path, steps=2)
    cfg.rollout.engine = "vllm"
    start = weights(Path(cfg.model.name_or_path))
    run_grpo(cfg, tmp_path / "a", progress=False, episode_reward=parity_reward)
    llm = next(iter(factory._COLOCATED.values()))
    first_run = list(llm.events)
    run_grpo(cfg, tmp_path / "b", progress=False, episode_reward=parity_reward)
    assert len(built) == 1 and built[0]["model"] == cfg.model.name_or_path
    second_run = llm.events[len(first_run):]
    for events, out in ((first_run, tmp_path / "a"), (second_run, tmp_path / "b")):
        kinds = [k for k, _ in events]
        assert kinds[0] == "push" and kinds.count("push") == 3 and "generate" in kinds  # start + 2 steps
        first_push, last_push = events[0][1], [e for k, e in events if k == "push"][-1]
        assert all(torch.equal(first_push[k], start[k]) for k in start)  # both runs start from the folder
        final = weights(sorted((out / "checkpoints").iterdir())[-1])
        assert all(torch.equal(last_push[k], final[k]) for k in final)
    assert not all(torch.equal(first_run[-1][1][k], start[k]) for k in start)  # the first run did train


@pytest.mark.parametrize("with_token_ids", [False, True])
def test_without_vllm_logprobs_same_tokens_zero_logprobs(tok, with_token_ids):
    """rollout.vllm_logprobs: false asks vLLM (colocated or served) for no log-probs: the same episodes, with zero
    log-probs for the trainer to re-score; a server that cannot return token ids is refused with the fix."""
    qs = ["What is the capital of France?", "Capital of Germany?"]
    scripts = {qs[0]: [" <search> capital of France </search>", " <answer> Paris </answer>"],
               qs[1]: [" <answer> Berlin </answer>"]}
    with_lp = VLLMEngine(FakeLLM(tok, scripts), tok, OverlapRetriever(), ALL_LP).run(examples(qs), seed=1)
    llm = FakeLLM(tok, scripts)
    cfg = RolloutConfig(vllm_logprobs=False)
    without = VLLMEngine(llm, tok, OverlapRetriever(), cfg).run(examples(qs), seed=1)
    assert all(sp.logprobs is None for *_, sp in llm.requests)
    fields = ("response_ids", "policy_mask", "queries", "answer", "stop_reason", "turns")
    assert [[getattr(e, f) for f in fields] for e in without] == [[getattr(e, f) for f in fields] for e in with_lp]
    assert all(lp == 0.0 for e in without for lp in e.logprobs) and any(lp < 0 for e in with_lp for lp in e.logprobs)
    bodies: list[dict] = []
    client = VLLMServerClient("localhost:8000", transport=mock_server(tok, scripts, with_token_ids, bodies))
    if not with_token_ids:
        with pytest.raises(RuntimeError, match="vllm_logprobs: true"):
            VLLMEngine(client, tok, OverlapRetriever(), cfg).run(examples(qs), seed=1)
        return
    served = VLLMEngine(client, tok, OverlapRetriever(), cfg).run(examples(qs), seed=1)
    assert [[getattr(e, f) for f in fields + ("logprobs",)] for e in served] == \
        [[getattr(e, f) for f in fields + ("logprobs",)] for e in without]
    assert bodies[0]["logprobs"] is None


def test_vllm_logprobs_config():
    for frac in (False, 0.5):
        with pytest.raises(ConfigError, match="leaves episodes without old log-probs"):
            RolloutConfig(engine="vllm", vllm_logprobs=frac, recompute_logprobs=False).validate()
    with pytest.raises(ConfigError, match="not a fraction of episodes"):
        RolloutConfig(vllm_logprobs=1.5).validate()
    RolloutConfig(engine="vllm", vllm_logprobs=False).validate()
    RolloutConfig(engine="hf", vllm_logprobs=False, recompute_logprobs=False).validate()  # no vLLM: no matter
    # unset: 1 in 8 while the trainer re-scores (the vLLM default), all when it does not
    assert RolloutConfig(engine="vllm").vllm_logprob_fraction() == DEFAULT_VLLM_LOGPROB_FRACTION == 0.125
    assert RolloutConfig(engine="vllm", recompute_logprobs=False).vllm_logprob_fraction() == 1.0
    assert [RolloutConfig(vllm_logprobs=v).vllm_logprob_fraction() for v in (True, False, 0.25)] == [1.0, 0.0, 0.25]
    from searche1.config import from_dict
    assert from_dict(RolloutConfig, {"vllm_logprobs": True}).vllm_logprobs is True  # YAML true/false still read
    assert from_dict(RolloutConfig, {"vllm_logprobs": 0.25}).vllm_logprob_fraction() == 0.25


@pytest.mark.parametrize("frac", [0.0, 0.125, 1 / 3, 0.5, 0.7, 1.0])
def test_logprobs_wanted_spreads_exactly(frac):
    """Exactly floor(n * frac) of the first n global indices, evenly: every window of k indices holds
    floor or ceil of k * frac; a rank's episodes are chosen by global index, so any split agrees."""
    chosen = [logprobs_wanted(i, frac) for i in range(200)]
    for n in range(201):
        assert sum(chosen[:n]) == int(n * frac + 1e-9)
    for k in (5, 8):
        assert all(abs(sum(chosen[i:i + k]) - k * frac) < 1 for i in range(200 - k))


def test_sampled_logprobs_only_for_chosen_episodes(tok):
    """Unset vllm_logprobs (1 in 8): vLLM (colocated or served) is asked for log-probs only for episodes 7, 15, ...
    of the global index; their records carry them, the others zeros and sampler_logprobs False; the tokens are the
    same as with log-probs everywhere."""
    qs = [f"Capital of country {k}?" for k in range(16)]
    scripts = {q: [" <search> capital </search>", " <answer> x </answer>"] for q in qs}
    every = VLLMEngine(FakeLLM(tok, scripts), tok, OverlapRetriever(), ALL_LP).run(examples(qs), seed=3)
    llm = FakeLLM(tok, scripts)
    some = VLLMEngine(llm, tok, OverlapRetriever(), RolloutConfig()).run(examples(qs), seed=3)
    assert [e.sampler_logprobs for e in some] == [i % 8 == 7 for i in range(16)]
    assert {(key, sp.logprobs) for key, _, _, sp in llm.requests} == \
        {(f"Question: {q}", 1 if i % 8 == 7 else None) for i, q in enumerate(qs)}
    for a, b in zip(every, some):
        assert (a.response_ids, a.policy_mask, a.answer) == (b.response_ids, b.policy_mask, b.answer)
        assert b.logprobs == (a.logprobs if b.sampler_logprobs else [0.0] * len(a.logprobs))
    assert all(e.sampler_logprobs for e in every)
    # a rank holding episodes 4..11 (first_index=4) chooses by global index: only episode 7
    part = VLLMEngine(FakeLLM(tok, scripts), tok, OverlapRetriever()).run(examples(qs)[4:12], seed=3, first_index=4)
    assert [e.sampler_logprobs for e in part] == [i == 7 for i in range(4, 12)]
    bodies: list[dict] = []
    client = VLLMServerClient("localhost:8000", transport=mock_server(tok, scripts, True, bodies))
    served = VLLMEngine(client, tok, OverlapRetriever()).run(examples(qs), seed=3)
    assert [(e.response_ids, e.logprobs, e.sampler_logprobs) for e in served] == \
        [(e.response_ids, e.logprobs, e.sampler_logprobs) for e in some]
    assert sorted(b["logprobs"] is not None for b in bodies) == [False] * 28 + [True] * 4  # 2 episodes x 2 turns


def test_rescore_gap_counts_only_sampler_rows():
    """The mismatch is over the policy tokens of rows whose sampler returned log-probs; the re-scored log-probs are
    the trainer's for every row."""
    from searche1.train import _rescore

    V = 7

    class Uniform(torch.nn.Module):  # logits 0: every log-prob is -log V
        def forward(self, input_ids, attention_mask):
            return types.SimpleNamespace(logits=torch.zeros(*input_ids.shape, V))

    ids = torch.randint(0, V, (3, 6))
    attn = torch.ones_like(ids)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0]], dtype=torch.float32)[:, 1:]
    old = torch.tensor([[-1.0] * 5, [0.0] * 5, [-2.0] * 5]) * mask
    has = torch.tensor([True, False, True])
    new, (gap_sum, n) = _rescore(Uniform(), ids, attn, mask, old, 2, RolloutConfig(), "cpu", False, has)
    lv = math.log(V)
    assert torch.allclose(new, -lv * mask)
    assert n == 3 + 2 and gap_sum == pytest.approx(3 * abs(lv - 1) + 2 * abs(lv - 2), rel=1e-5)
    assert _rescore(Uniform(), ids, attn, mask, old, 2, RolloutConfig(), "cpu", False, has | True)[1][1] == 10
    assert _rescore(Uniform(), ids, attn, mask, old, 2, RolloutConfig(), "cpu", False, has & False)[1] == (0.0, 0.0)


def test_grpo_without_vllm_logprobs_rescored_and_no_mismatch(fake_vllm, tmp_path):
    """With no sampler log-probs the trainer re-scores the samples and logs no mismatch; with them (all, or half
    the episodes) it logs one, over the episodes that have them."""
    from test_train import make_config, parity_reward

    from searche1.metrics import read_metrics
    from searche1.train import run_grpo

    fake_vllm.LLM = lambda **kw: RandomLLM(vocab=550)
    gaps = {}
    for flag in (False, 0.5, True):
        cfg = make_config(tmp_path, steps=1)
        cfg.rollout.engine, cfg.rollout.vllm_logprobs = "vllm", flag
        (row,) = read_metrics(run_grpo(cfg, tmp_path / f"lp-{flag}", progress=False, episode_reward=parity_reward))
        assert row["train/kept_rollouts"] > 0 and ("rollout/logprob_mismatch" in row) == bool(flag)
        gaps[flag] = row.get("rollout/logprob_mismatch")
    # the fake's log-probs are all -1 and the model's far lower: the zeros of unsampled episodes would add to the gap
    assert gaps[0.5] == pytest.approx(gaps[True], rel=0.03)  # 5.41 vs 5.44; with those zeros it would be ~5.9


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
