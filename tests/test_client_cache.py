"""RemoteRetriever against a real uvicorn server in a thread (round trip, retries across a restart, server down,
4xx not retried, malformed answers) and CachedRetriever (hits, misses-only batching, normalisation, LRU, order).
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from searche1.errors import RetrievalError
from searche1.retrieval.base import Hit, Retriever
from searche1.retrieval.cache import CachedRetriever, normalize_query
from searche1.retrieval.client import RemoteRetriever
from searche1.retrieval.server import ServerLimits, create_app, start_in_thread

from toy_retriever import OverlapRetriever  # noqa: E402

QUERIES = ["capital of France", "Danube Vienna", "python language", "nothing matches here", "Eiffel Paris"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    handle = start_in_thread(create_app(OverlapRetriever(), info={"index": "toy"}))
    yield handle
    handle.stop()


# -- client ------------------------------------------------------------------------------------------------------
def test_round_trip_equals_in_process(server) -> None:
    local = OverlapRetriever().search(QUERIES, topk=2)
    with RemoteRetriever(server.url + "/retrieve", batch_size=2) as remote:  # 3 requests: 2 + 2 + 1
        assert isinstance(remote, Retriever)
        assert remote.search(QUERIES, topk=2) == local
        assert remote.search([], topk=2) == []
        health = remote.health()
    assert health == {"status": "ok", "index": "toy", "queries_served": len(QUERIES)}


def test_retries_across_server_restart() -> None:
    port = free_port()
    app = create_app(OverlapRetriever())
    start_in_thread(app, port=port).stop()  # the port is now closed
    restarted: list = []

    def restart() -> None:
        time.sleep(1.0)
        restarted.append(start_in_thread(app, port=port))

    t = threading.Thread(target=restart)
    t.start()
    try:
        # waits 0.2, 0.4, 0.8, 1.6 s (+-10%): the server is back before the last attempt
        with RemoteRetriever(f"127.0.0.1:{port}", timeout=2.0, retries=5, backoff=0.2, max_backoff=1.6) as remote:
            t0 = time.monotonic()
            hits = remote.search(["capital of France"], topk=1)
            assert time.monotonic() - t0 >= 0.9
        assert hits[0][0].id == "0"
    finally:
        t.join()
        for h in restarted:
            h.stop()


def test_server_down_raises_clear_error_in_bounded_time() -> None:
    port = free_port()
    remote = RemoteRetriever(f"http://127.0.0.1:{port}", timeout=1.0, retries=2, backoff=0.05)
    t0 = time.monotonic()
    with pytest.raises(RetrievalError) as ei:
        remote.search(["q"])
    assert time.monotonic() - t0 < 2.0
    msg = str(ei.value)
    assert f"127.0.0.1:{port}" in msg and "unreachable after 3 attempts" in msg and "searche1 serve --index" in msg


def test_4xx_not_retried_and_detail_surfaced() -> None:
    handle = start_in_thread(create_app(OverlapRetriever(), ServerLimits(max_queries=2)))
    try:
        with RemoteRetriever(handle.url, retries=3, backoff=5.0, batch_size=10) as remote:
            t0 = time.monotonic()
            with pytest.raises(RetrievalError, match=r"HTTP 422.*max_queries"):
                remote.search(["a", "b", "c"])
            assert time.monotonic() - t0 < 2.0  # a retry would have slept 5 s
            remote.batch_size = 2
            assert len(remote.search(["a", "b", "c"])) == 3
    finally:
        handle.stop()


def _mock(responses: list) -> tuple[httpx.MockTransport, list]:
    calls: list = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        r = responses[min(len(calls), len(responses)) - 1]
        if isinstance(r, Exception):
            raise r
        return r

    return httpx.MockTransport(handler), calls


def test_5xx_and_timeouts_retried_then_succeed() -> None:
    ok = httpx.Response(200, json={"result": [[{"document": {"id": 7, "title": "T", "text": "body"}, "score": 1.5}]]})
    transport, calls = _mock([httpx.Response(500, json={"detail": "boom"}), httpx.ReadTimeout("slow"), ok])
    remote = RemoteRetriever("http://x", retries=2, backoff=0.01, transport=transport)
    assert remote.search(["q"]) == [[Hit("7", '"T"\nbody', 1.5)]]
    assert len(calls) == 3


def test_persistent_5xx_gives_up_with_detail() -> None:
    transport, calls = _mock([httpx.Response(500, json={"detail": "retriever failed: index is broken"})])
    remote = RemoteRetriever("http://x", retries=2, backoff=0.01, transport=transport)
    with pytest.raises(RetrievalError, match="failed after 3 attempts: HTTP 500: retriever failed: index is broken"):
        remote.search(["q"])
    assert len(calls) == 3


def test_4xx_not_retried_mock() -> None:
    transport, calls = _mock([httpx.Response(422, json={"detail": "field 'topk': bad"})])
    with pytest.raises(RetrievalError, match="field 'topk': bad"):
        RemoteRetriever("http://x", retries=3, transport=transport).search(["q"])
    assert len(calls) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"result": []},  # wrong length
        {"results": [[]]},  # wrong key
        {"result": [[{"document": {"id": "1"}}]]},  # no contents
        {"result": [[{"document": "a string"}]]},
        {"result": [["a string"]]},
        {"result": ["not a list"]},
    ],
)
def test_malformed_response_rejected(body) -> None:
    transport, calls = _mock([httpx.Response(200, json=body)])
    with pytest.raises(RetrievalError, match="malformed"):
        RemoteRetriever("http://x", transport=transport).search(["q"])
    assert len(calls) == 1


def test_searchr1_bm25_documents_without_id_get_a_stable_id() -> None:
    """Search-R1's pyserini BM25 server answers documents as {title, text, contents}, no id."""
    content = '"Paris"\nParis is the capital of France.'
    doc = {"title": "Paris", "text": "Paris is the capital of France.", "contents": content}
    other = {"title": "Rome", "text": "Rome is in Italy.", "contents": '"Rome"\nRome is in Italy.'}
    body = {"result": [[{"document": doc, "score": 12.3}, {"document": other, "score": 1.0}]]}
    transport, calls = _mock([httpx.Response(200, json=body)] * 2)
    r = RemoteRetriever("http://searchr1:8000", transport=transport, retries=0)
    [[a, b]] = r.search(["capital of france"], 2)
    assert json.loads(calls[0].content)["return_scores"] is True  # our client always asks for scores
    assert (a.contents, a.score) == (content, 12.3) and a.id.startswith("sha1-") and a.id != b.id
    assert [h.id for h in r.search(["capital of france"], 2)[0]] == [a.id, b.id]  # stable across calls
    # only contents: title/text joined FlashRAG-style, the id is the same hash of those contents
    transport, _ = _mock([httpx.Response(200, json={"result": [[{"document": {"title": "Paris",
                                                                               "text": doc["text"]}}]]})])
    [[c]] = RemoteRetriever("http://x", transport=transport, retries=0).search(["q"], 1)
    assert (c.id, c.contents) == (a.id, content)


def test_bare_documents_accepted() -> None:
    """Search-R1's return_scores false shape: each hit is the document itself."""
    body = {"result": [[{"id": "7", "contents": '"T"\ntext'}]]}
    transport, _ = _mock([httpx.Response(200, json=body)])
    assert RemoteRetriever("http://x", transport=transport).search(["q"], 1) == [[Hit("7", '"T"\ntext', 0.0)]]


# -- cache -------------------------------------------------------------------------------------------------------
def test_cache_only_misses_sent_in_one_batch_and_order_preserved() -> None:
    inner = OverlapRetriever()
    cache = CachedRetriever(inner)
    first = cache.search(["capital of France", "Danube Vienna"], topk=2)
    assert inner.batches == [["capital of france", "danube vienna"]]
    out = cache.search(["Danube Vienna", "python language", "capital of France", "Eiffel Paris"], topk=2)
    assert inner.batches[1] == ["python language", "eiffel paris"]  # only the misses, in one call
    expected = ["danube vienna", "python language", "capital of france", "eiffel paris"]
    assert out == OverlapRetriever().search(expected, 2)
    assert out[0] == first[1] and out[2] == first[0]
    s = cache.stats()
    assert (s["hits"], s["misses"], s["size"]) == (2, 4, 4)
    assert s["hit_rate"] == pytest.approx(2 / 6) == s["retrieval/cache_hit_rate"]


def test_cache_normalisation_duplicates_and_topk_key() -> None:
    assert normalize_query("  Foo \t BAR\n") == "foo bar"
    inner = OverlapRetriever()
    cache = CachedRetriever(inner)
    out = cache.search(["  Foo BAR ", "foo bar", "FOO   bar"], topk=1)
    assert inner.batches == [["foo bar"]]  # duplicates in one batch looked up once
    assert out[0] == out[1] == out[2]
    cache.search(["foo bar"], topk=2)  # a different topk is a different key
    assert len(inner.batches) == 2
    assert cache.stats()["hits"] == 2 and cache.stats()["misses"] == 2


def test_cache_lru_eviction() -> None:
    inner = OverlapRetriever()
    cache = CachedRetriever(inner, maxsize=2)
    cache.search(["a"])
    cache.search(["b"])
    cache.search(["a"])  # a is now most recent
    cache.search(["c"])  # evicts b
    assert len(cache) == 2 and cache.stats()["evictions"] == 1
    n = len(inner.batches)
    cache.search(["a", "c"])
    assert len(inner.batches) == n  # both still cached
    cache.search(["b"])
    assert inner.batches[-1] == ["b"]


def test_cache_returns_copies_and_rejects_bad_inner() -> None:
    cache = CachedRetriever(OverlapRetriever())
    out = cache.search(["paris"])
    out[0].clear()
    assert len(cache.search(["paris"])[0]) == 3

    class Short:
        def search(self, queries, topk=3):
            return []

    with pytest.raises(RetrievalError, match="0 result lists for 1"):
        CachedRetriever(Short()).search(["x"])


def test_cache_thread_safe() -> None:
    cache = CachedRetriever(OverlapRetriever(), maxsize=8)
    errors: list = []

    def worker(k: int) -> None:
        try:
            for i in range(200):
                qs = [f"q{(i + k + j) % 20}" for j in range(3)]
                assert len(cache.search(qs, topk=1)) == 3
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(cache) <= 8
    s = cache.stats()
    assert s["hits"] + s["misses"] == 4 * 200 * 3


def test_cached_remote_end_to_end(server) -> None:
    with CachedRetriever(RemoteRetriever(server.url)) as cache:
        a = cache.search(QUERIES)
        b = cache.search([q.upper() for q in QUERIES])
        assert a == b == OverlapRetriever().search([q.lower() for q in QUERIES])
        assert cache.stats()["hits"] == len(QUERIES)


def test_health_answers_while_a_search_blocks() -> None:
    release = threading.Event()

    class Blocking(OverlapRetriever):
        def search(self, queries, topk=3):
            release.wait(5)
            return super().search(queries, topk)

    handle = start_in_thread(create_app(Blocking()))
    try:
        remote = RemoteRetriever(handle.url, timeout=5.0)
        result: list = []
        t = threading.Thread(target=lambda: result.append(remote.search(["paris"])))
        t.start()
        time.sleep(0.1)
        with RemoteRetriever(handle.url, timeout=1.0, retries=0) as probe:
            assert probe.health()["status"] == "ok"  # the event loop is not blocked by the search
        assert not result
        release.set()
        t.join(5)
        assert result and result[0][0][0].id == "0"
    finally:
        release.set()
        remote.close()
        handle.stop()


def test_start_in_thread_port_taken_fails_clearly(server) -> None:
    with pytest.raises(RuntimeError, match="failed to start"):
        start_in_thread(create_app(OverlapRetriever()), port=server.port, log_level="critical")


def test_node_proxy_shares_one_cache_across_clients(server) -> None:
    """`searche1 serve --upstream URL`: a per-node caching proxy in front of the shared server; two clients (two
    ranks of a node) asking the same queries cost the upstream one lookup each."""
    proxy = start_in_thread(create_app(CachedRetriever(RemoteRetriever(server.url)), info={"upstream": server.url}))
    try:
        local = OverlapRetriever().search(QUERIES, topk=2)
        for _rank in range(2):
            with RemoteRetriever(proxy.url) as client:
                assert client.search(QUERIES, topk=2) == local
        with RemoteRetriever(server.url) as upstream:
            assert upstream.health()["queries_served"] == len(QUERIES)  # misses only, once
    finally:
        proxy.stop()


def test_serve_needs_exactly_one_source() -> None:
    from typer.testing import CliRunner

    from searche1.cli import app

    res = CliRunner().invoke(app, ["serve"])
    assert res.exit_code != 0 and "--index/--upstream: give exactly one" in res.output
