"""Stand-ins for vLLM in its engine's tests: a fake ``vllm`` module (autouse fixture ``fake_vllm``: import it), a
scripted ``vllm.LLM`` (FakeLLM) that stops like vLLM, a random one for training runs (RandomLLM), a mock ``vllm
serve`` (mock_server), fake colocated engines for ``push_weights``. Not shown by any of them: real vLLM behaviour
(benchmarks/vllm_frontend_check.py runs the engine through vLLM's real front end); but they refuse the keywords,
``SamplingParams`` fields and ``/v1/completions`` fields that vLLM 0.20 refuses or ignores (vllm_020_api.json)."""

from __future__ import annotations

import collections
import itertools
import json
import random
import sys
import types
from pathlib import Path

import httpx
import pytest
import torch

from searche1 import protocol
from searche1.data.types import QAExample
from searche1.rollout.types import Episode, RolloutConfig
from searche1.rollout.vllm_engine import VLLMEngine

from tiny import tiny_tokenizer
from toy_retriever import OverlapRetriever


FILLER = " the"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


API = json.loads((Path(__file__).with_name("vllm_020_api.json")).read_text())  # names real vLLM 0.20 takes


class FakeSamplingParams(types.SimpleNamespace):
    """Keyword arguments become attributes, like ``SamplingParams``; a name vLLM 0.20's has not is refused with its
    error (msgspec: "Unexpected keyword argument")."""

    def __init__(self, **kw) -> None:
        if bad := sorted(set(kw) - set(API["sampling_params"])):
            raise TypeError(f"Unexpected keyword argument {bad[0]!r}")
        super().__init__(**{"output_kind": "cumulative", **kw})


def checked_llm(factory):
    """``factory`` (a fake ``vllm.LLM``) behind vLLM 0.20's check of its keywords: ``LLM.__init__`` passes those it
    does not name to ``EngineArgs``, which refuses any other."""

    def make(*args, **kw):
        if len(args) > 1 or (args and "model" in kw):
            raise TypeError("LLM.__init__() takes 1 positional argument (model)")
        if bad := sorted(set(kw) - set(API["llm_kwargs"])):
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {bad[0]!r}")
        return factory(*args, **kw)

    return make


class FakeVLLMModule(types.ModuleType):
    """The fake ``vllm`` module: a test's ``fake_vllm.LLM = ...`` gets vLLM 0.20's keyword check (checked_llm)."""

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, checked_llm(value) if name == "LLM" else value)


def install_fake_vllm(setitem=sys.modules.__setitem__) -> FakeVLLMModule:
    """Put a stand-in ``vllm`` module into ``sys.modules`` (through ``setitem``: a test's ``monkeypatch.setitem``
    undoes it; a rank process of tests/test_distributed.py keeps it)."""
    mod = FakeVLLMModule("vllm")
    mod.SamplingParams = FakeSamplingParams
    mod.__version__ = "0.0-fake"
    mod.sampling_params = types.ModuleType("vllm.sampling_params")
    mod.sampling_params.RequestOutputKind = types.SimpleNamespace(FINAL_ONLY="final_only")
    setitem("vllm", mod)
    setitem("vllm.sampling_params", mod.sampling_params)
    return mod


@pytest.fixture(autouse=True)
def fake_vllm(monkeypatch):
    """A stand-in ``vllm`` module, so the engine's lazy ``from vllm import SamplingParams`` works."""
    mod = install_fake_vllm(lambda name, value: monkeypatch.setitem(sys.modules, name, value))
    monkeypatch.setattr("searche1.rollout.factory._COLOCATED", {})  # no engine from another test's fake vLLM
    return mod


Logprob = collections.namedtuple("Logprob", "logprob rank decoded_token", defaults=(None, None))  # like vLLM's


def fake_lp(turn: int, k: int) -> float:
    return -(0.5 + 0.1 * turn + 0.01 * k)


class FakeEngine:
    """``FakeLLM.llm_engine`` for streamed turns (``rollout.vllm_stream_turns``): ``add_request`` queues a request;
    each ``step()`` finishes a seeded random ~40% of the queue (FakeLLM.complete), in queue order, so requests
    submitted together come back at different steps, as vLLM's do."""

    def __init__(self, llm: FakeLLM, seed: int = 0) -> None:
        self.llm, self.rng = llm, random.Random(seed)
        self.queue: dict[str, tuple[list[int], object]] = {}
        self.added: list[str] = []
        self.aborted: list[str] = []
        self.max_queued = self.steps = 0

    def add_request(self, request_id: str, prompt: dict, params, arrival_time=None, lora_request=None,
                    tokenization_kwargs=None, trace_headers=None, priority=0, prompt_text=None) -> str:
        if not isinstance(request_id, str):  # as vLLM 0.20's LLMEngine.add_request
            raise TypeError(f"request_id must be a string, got {type(request_id)}")
        assert request_id not in self.queue and params.output_kind == "final_only"
        self.queue[request_id] = (list(prompt["prompt_token_ids"]), params)
        self.added.append(request_id)
        self.max_queued = max(self.max_queued, len(self.queue))
        return f"{request_id}-internal"  # vLLM 0.20 returns its internal id (external id + a random suffix)

    def has_unfinished_requests(self) -> bool:
        return bool(self.queue)

    def step(self) -> list[types.SimpleNamespace]:
        self.steps += 1
        done = [rid for rid in self.queue if self.rng.random() < 0.4]
        return [types.SimpleNamespace(request_id=rid, finished=True, outputs=[self.llm.complete(*self.queue.pop(rid))])
                for rid in done]

    def abort_request(self, request_ids: list[str], internal: bool = False) -> None:
        assert isinstance(request_ids, list) and not internal  # our external ids, as step() reports them
        self.aborted.extend(request_ids)
        for rid in request_ids:
            self.queue.pop(rid, None)


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
        self.llm_engine = FakeEngine(self)

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

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, priority=None,
                 tokenization_kwargs=None, mm_processor_kwargs=None):  # vLLM 0.20's LLM.generate signature
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


def mock_server(tok, scripts, with_token_ids: bool, log: list[dict]):
    fake = FakeLLM(tok, scripts)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tiny"}]})
        body = json.loads(request.content)
        log.append(body)
        if bad := sorted(set(body) - set(API["completion_request"])):  # vLLM 0.20 would ignore them, silently
            return httpx.Response(400, json={"error": f"not /v1/completions fields in vLLM 0.20: {bad}"})
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


def fake_colocated(**methods) -> tuple[types.SimpleNamespace, dict]:
    """A fake LLM (counting prefix-cache resets) and the dict its fake vLLM model's ``load_weights`` fills."""
    loaded: dict[str, torch.Tensor] = {}
    llm = types.SimpleNamespace(resets=0, vllm_model=types.SimpleNamespace(load_weights=lambda w: loaded.update(w)))
    llm.reset_prefix_cache = lambda: setattr(llm, "resets", llm.resets + 1)
    for name, make_method in methods.items():
        setattr(llm, name, make_method(llm.vllm_model))
    return llm, loaded


class RandomLLM:
    """A colocated ``vllm.LLM`` stand-in for a training run: each request gets seeded random tokens; the in-process
    model (``llm_engine...model_runner.model``) records every weight push and the generate calls before it."""

    def __init__(self, vocab: int) -> None:
        self.vocab, self.events = vocab, []  # ("push", {name: tensor}) | ("generate", n)
        self.params: list[list] = []  # the SamplingParams of each generate call
        model = types.SimpleNamespace(load_weights=lambda w: self.events.append(
            ("push", {k: v.detach().clone() for k, v in w})))
        self.llm_engine = types.SimpleNamespace(model_executor=types.SimpleNamespace(
            driver_worker=types.SimpleNamespace(model_runner=types.SimpleNamespace(model=model))))

    def reset_prefix_cache(self) -> None:
        pass

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, priority=None,
                 tokenization_kwargs=None, mm_processor_kwargs=None):
        self.events.append(("generate", len(prompts)))
        self.params.append(list(sampling_params))
        outs = []
        for sp in sampling_params:
            g = torch.Generator().manual_seed(sp.seed if sp.seed is not None else 0)
            ids = torch.randint(3, self.vocab, (sp.max_tokens,), generator=g).tolist()
            lps = None if sp.logprobs is None else [{t: Logprob(-1.0, 1)} for t in ids]  # like vLLM
            c = types.SimpleNamespace(token_ids=ids, logprobs=lps, finish_reason="length")
            outs.append(types.SimpleNamespace(outputs=[c]))
        return outs
