"""VLLMServerClient on ``httpx.MockTransport`` (a mock ``vllm serve``): the same episodes as the colocated engine,
request bodies, weight reloads by path."""

from __future__ import annotations

import json
import types

import httpx
import pytest

from searche1.rollout.types import RolloutConfig
from searche1.rollout.vllm_engine import VLLMEngine, VLLMServerClient, turn_seed

from toy_retriever import OverlapRetriever
from vllm_fakes import FakeLLM, ALL_LP, examples, mock_server
from vllm_fakes import fake_vllm, tok  # noqa: F401 (fixtures; fake_vllm is autouse)


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
    # sent neutral: else vllm serve takes them from the model's generation_config.json (e.g. top_k 20)
    assert (b["top_k"], b["min_p"], b["repetition_penalty"]) == (0, 0.0, 1.0)


def test_mock_server_refuses_fields_vllm_ignores(tok):
    """vLLM 0.20's server drops /v1/completions fields it does not know without a word; the mock refuses them, so
    a misspelt field fails here instead of sampling otherwise on the GPU."""
    from searche1.rollout.vllm_engine import TurnRequest

    client = VLLMServerClient("h:1", transport=mock_server(tok, {}, True, []), retries=0)
    with pytest.raises(RuntimeError, match=r"answered 400.*topk"):
        client.generate([TurnRequest([1, 2], 4, 0)], {"stop": [], "stop_token_ids": [], "topk": 5})


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


def test_server_client_keeps_its_concurrency_in_flight(tok, tmp_path):
    """rollout.vllm_server_concurrency requests are in flight at once (the server batches what is in flight), more
    than 100; make_engine passes the setting on. (A mock transport has no connection pool: the client's pool, sized
    to match since httpx's default holds 100, is not exercised here.)"""
    import threading

    from searche1.rollout.factory import make_engine
    from searche1.rollout.vllm_engine import TurnRequest

    lock, now, peak, enough = threading.Lock(), [0], [0], threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tiny"}]})
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
            if now[0] > 100:
                enough.set()
        # hold each request until more than 100 are in flight at once (a timed sleep let a loaded machine start
        # its threads too slowly to get there); a client capped lower gives up here after 2 s a request
        enough.wait(timeout=2)
        with lock:
            now[0] -= 1
        return httpx.Response(200, json={"choices": [{"token_ids": [5, 6], "logprobs": None, "finish_reason": "stop"}]})

    client = VLLMServerClient("localhost:8000", transport=httpx.MockTransport(handler), concurrency=150)
    out = client.generate([TurnRequest([1, 2], 4, k, logprobs=False) for k in range(300)], {})
    assert len(out) == 300 and all(s.token_ids == [5, 6] for s in out)
    assert 100 < peak[0] <= 150
    cfg = RolloutConfig(engine="vllm-server", vllm_url="http://127.0.0.1:1", vllm_server_concurrency=300)
    engine, _, _ = make_engine(cfg, types.SimpleNamespace(generation_config=None), tok, None, model_path=tmp_path,
                               sync_dir=tmp_path, device="cpu")
    assert engine.llm.concurrency == 300


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_server_sync_writes_the_trained_weights_in_the_servers_dtype(tmp_path, monkeypatch, device):
    """rollout.engine vllm-server: each sync writes the policy to the sync folder and asks the server to reload it;
    for a GPU server (bf16) the fp32 trained weights are written as bf16, the same tensors a plain save holds."""
    import torch
    from safetensors.torch import load_file

    import searche1.rollout.factory as factory
    from searche1.checkpoint import save_policy
    from tiny import tiny_model, tiny_tokenizer

    reloads = []
    monkeypatch.setattr(factory, "_server_client",
                        lambda cfg, url=None: types.SimpleNamespace(reload_weights=reloads.append))
    tk = tiny_tokenizer()
    model = tiny_model(tk)
    _, sync, exact = factory.make_engine(RolloutConfig(engine="vllm-server", vllm_url="h:1"), model, tk, None,
                                         model_path=tmp_path, sync_dir=tmp_path / "sync", device=device)
    sync()
    save_policy(model, tk, tmp_path / "plain")
    plain, synced = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("plain", "sync"))
    assert not exact and reloads == [str((tmp_path / "sync").resolve())] and synced.keys() == plain.keys()
    want = torch.bfloat16 if device == "cuda" else torch.float32
    assert all(v.dtype == want and torch.equal(v, plain[k].to(want)) for k, v in synced.items())


def test_server_for_rank_spreads_ranks_and_names_one_pusher_per_server():
    from searche1.errors import ConfigError
    from searche1.rollout.factory import server_for_rank

    one = [server_for_rank("http://a:1", r, 4) for r in range(4)]
    assert one == [("http://a:1", True)] + [("http://a:1", False)] * 3
    two = "http://a:1, http://b:2"  # one server per node of 2 ranks each: ranks 0, 1 on a; 2, 3 on b
    assert [server_for_rank(two, r, 4) for r in range(4)] == [
        ("http://a:1", True), ("http://a:1", False), ("http://b:2", True), ("http://b:2", False)]
    three = [server_for_rank("a,b,c", r, 7) for r in range(7)]  # blocks of 3, 2, 2 ranks
    assert three == [("a", True), ("a", False), ("a", False), ("b", True), ("b", False), ("c", True), ("c", False)]
    with pytest.raises(ConfigError, match="vllm_url: 2 servers for 1 rank.*fix: list at most 1"):
        server_for_rank(two, 0, 1)
    with pytest.raises(ConfigError, match="vllm_url: engine vllm-server needs"):
        server_for_rank(" , ", 0, 1)
    with pytest.raises(ConfigError, match="vllm_url: engine vllm-server needs"):
        RolloutConfig(engine="vllm-server", vllm_url=",").validate()


@pytest.mark.parametrize("rank, urls, pushes", [(0, "h:1", True), (1, "h:1", False), (1, "h:1,h:2", True),
                                                 (0, "h:1,h:2", True)])
def test_server_sync_on_several_ranks_pushes_once_per_server_then_waits(tmp_path, monkeypatch, rank, urls, pushes):
    """W ranks on one server: only rank 0 saves the policy and reloads the server (all ranks hold the same weights
    after a step), then every rank waits at a barrier, so none samples before the reload is done."""
    import searche1.rollout.factory as factory
    from tiny import tiny_model, tiny_tokenizer

    used, reloads, barriers = [], [], []
    monkeypatch.setattr(factory, "_server_client", lambda cfg, url=None: used.append(url) or types.SimpleNamespace(
        reload_weights=reloads.append))
    dist = types.SimpleNamespace(rank=rank, world=2, enabled=True, barrier=lambda: barriers.append(len(reloads)))
    tk = tiny_tokenizer()
    _, sync, _ = factory.make_engine(RolloutConfig(engine="vllm-server", vllm_url=urls), tiny_model(tk), tk, None,
                                     model_path=tmp_path, sync_dir=tmp_path / "sync", device="cpu", dist=dist)
    sync()
    sync()
    assert used == [urls.split(",")[rank * len(urls.split(",")) // 2]]
    assert len(reloads) == (2 if pushes else 0) and (tmp_path / "sync").is_dir() == pushes
    assert barriers == ([1, 2] if pushes else [0, 0])  # each barrier after that step's reload
