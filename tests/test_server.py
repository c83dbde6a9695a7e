"""The retrieval server (in-process TestClient): Search-R1 response shape, request limits and validation, failures.

Every rejected or failing request is followed by a ``/health`` check: the server must keep serving.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from searche1.retrieval.server import ServerLimits, create_app

from toy_retriever import PASSAGES, OverlapRetriever  # noqa: E402

@pytest.fixture
def retriever() -> OverlapRetriever:
    return OverlapRetriever()


@pytest.fixture
def client(retriever: OverlapRetriever) -> TestClient:
    return TestClient(create_app(retriever, info={"index": "toy", "num_docs": 5}))


def assert_healthy(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


def test_response_shape_exact(client: TestClient) -> None:
    payload = {"queries": ["capital of France", "Danube Vienna"], "topk": 2, "return_scores": True}
    r = client.post("/retrieve", json=payload)
    assert r.status_code == 200
    body = r.json()
    assert list(body) == ["result"]
    assert len(body["result"]) == 2
    for hits in body["result"]:
        assert len(hits) == 2
        for h in hits:
            assert set(h) == {"document", "score"}
            assert set(h["document"]) == {"id", "contents"}
            assert isinstance(h["score"], float)
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True)
    assert body["result"][0][0] == {"document": {"id": "0", "contents": PASSAGES[0][1]}, "score": 3.0}
    assert body["result"][1][0]["document"]["id"] == "3"


def test_return_scores_false_and_defaults(client: TestClient) -> None:
    r = client.post("/retrieve", json={"queries": ["Paris"]})  # topk default 3, return_scores default false
    assert r.status_code == 200
    hits = r.json()["result"][0]
    assert len(hits) == 3
    assert all(set(h) == {"id", "contents"} for h in hits)  # Search-R1's shape: the bare document, no wrapper
    assert hits[0] == {"id": "0", "contents": PASSAGES[0][1]}
    r = client.post("/retrieve", json={"queries": ["Paris"], "topk": None, "return_scores": False})
    assert r.status_code == 200 and len(r.json()["result"][0]) == 3


def test_health_reports_info_and_counts(client: TestClient) -> None:
    client.post("/retrieve", json={"queries": ["a", "b", "c"], "topk": 1})
    body = client.get("/health").json()
    assert body == {"status": "ok", "index": "toy", "num_docs": 5, "queries_served": 3}


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"queries": ["q"] * 513}, 422, "512"),
        ({"queries": ["x" * 2049]}, 422, "2048"),
        ({"queries": ["q"], "topk": 0}, 422, "topk"),
        ({"queries": ["q"], "topk": 51}, 422, "50"),
        ({"queries": []}, 422, "queries"),
        ({"topk": 3}, 422, "queries"),
        ({"queries": "just a string"}, 422, "queries"),
        ({"queries": [1, 2]}, 422, "queries[0]"),
        ({"queries": ["q"], "topk": "3"}, 422, "topk"),
        ({"queries": ["q"], "top_k": 3}, 422, "top_k"),
        (["q"], 422, "JSON object"),
    ],
)
def test_invalid_requests_rejected_and_server_keeps_serving(client, retriever, payload, status, needle) -> None:
    r = client.post("/retrieve", json=payload)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and needle in detail
    assert retriever.calls == 0
    assert_healthy(client)


def test_limit_messages_name_field_and_limit(client) -> None:
    d = client.post("/retrieve", json={"queries": ["q"] * 600}).json()["detail"]
    assert "queries" in d and "600" in d and "512" in d
    d = client.post("/retrieve", json={"queries": ["ok", "y" * 3000]}).json()["detail"]
    assert "queries[1]" in d and "3000" in d and "2048" in d
    d = client.post("/retrieve", json={"queries": ["q"], "topk": 51}).json()["detail"]
    assert "topk" in d and "51" in d and "50" in d


def test_bad_json(client) -> None:
    r = client.post("/retrieve", content=b'{"queries": [', headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500
    assert "JSON" in r.json()["detail"]
    assert_healthy(client)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"[" * 2000 + b"]" * 2000, "nested too deeply"),  # json.loads: RecursionError
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
        (b'{"queries": ["apple"], "topk": ' + b"9" * 5000 + b"}", "not valid JSON"),  # ValueError: int digit limit
        (b'{"queries": ["\xff"]}', "JSON"),  # not UTF-8
    ],
)
def test_unparseable_json_is_400_not_500(client, body: bytes, needle: str) -> None:
    r = client.post("/retrieve", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert needle in r.json()["detail"]
    assert_healthy(client)


def test_body_too_large_by_header(client) -> None:
    body = json.dumps({"queries": ["word " * 400] * 500}).encode()
    assert len(body) > 1_000_000
    r = client.post("/retrieve", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "1000000" in r.json()["detail"]
    assert_healthy(client)


def test_body_too_large_streamed_without_content_length(retriever) -> None:
    client = TestClient(create_app(retriever, ServerLimits(max_body_bytes=1000)))
    body = json.dumps({"queries": ["q" * 100] * 20}).encode()

    def chunks():
        for i in range(0, len(body), 256):
            yield body[i : i + 256]

    r = client.post("/retrieve", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "1000" in r.json()["detail"]
    assert_healthy(client)
    # a small streamed body still works
    small = json.dumps({"queries": ["Paris"], "topk": 1}).encode()
    r = client.post("/retrieve", content=iter([small]), headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["result"][0][0]["id"] == "0"


def test_custom_limits(retriever) -> None:
    client = TestClient(create_app(retriever, ServerLimits(max_queries=2, max_query_chars=5, max_topk=2)))
    assert client.post("/retrieve", json={"queries": ["a", "b", "c"]}).status_code == 422
    assert client.post("/retrieve", json={"queries": ["abcdef"]}).status_code == 422
    assert client.post("/retrieve", json={"queries": ["a"], "topk": 3}).status_code == 422
    assert client.post("/retrieve", json={"queries": ["a", "b"], "topk": 2}).status_code == 200


def test_retriever_exception_is_500_and_server_survives(retriever, client) -> None:
    retriever.fail = True
    r = client.post("/retrieve", json={"queries": ["Paris"]})
    assert r.status_code == 500
    assert "index is broken" in r.json()["detail"]
    assert_healthy(client)
    retriever.fail = False
    assert client.post("/retrieve", json={"queries": ["Paris"]}).status_code == 200


def test_an_upstream_that_is_down_logs_one_line_per_request(caplog) -> None:
    """A proxy (`serve --upstream`) whose upstream is down logged a full traceback for every request."""
    import logging

    from searche1.errors import RetrievalError

    class Down:
        def search(self, queries, topk=3):
            raise RetrievalError("retrieval server at http://up:8000 unreachable after 4 attempts")

    assert TestClient(create_app(Down())).post("/retrieve", json={"queries": ["a"]}).status_code == 500  # an index
    caplog.clear()
    c = TestClient(create_app(Down(), info={"kind": "proxy"}))
    with caplog.at_level(logging.ERROR, logger="searche1.retrieval.server"):
        r = c.post("/retrieve", json={"queries": ["a"]})
    assert r.status_code == 502 and "unreachable" in r.json()["detail"]  # a proxy's upstream failed: bad gateway
    (rec,) = [r for r in caplog.records if r.name == "searche1.retrieval.server"]
    assert "unreachable after 4 attempts" in rec.getMessage() and rec.exc_info is None
    assert_healthy(c)


def test_retriever_wrong_length_is_500(client) -> None:
    class Short:
        def search(self, queries, topk=3):
            return []

    c = TestClient(create_app(Short()))
    r = c.post("/retrieve", json={"queries": ["a"]})
    assert r.status_code == 500 and "0 result lists for 1" in r.json()["detail"]
    assert_healthy(c)


def test_invalid_limits_rejected() -> None:
    from searche1.errors import ConfigError

    with pytest.raises(ValueError, match="max_topk"):
        ServerLimits(max_topk=0)
    with pytest.raises(ConfigError, match="--max-queries"):  # the CLI's error type, naming the option
        ServerLimits(max_queries=0)


@pytest.mark.parametrize("devices", ["cpu*x", "cpu*0", "*2", "cpu*-1", "cpu*"])
def test_bad_dense_devices_is_a_config_error(devices: str) -> None:
    """`searche1 serve --dense-devices 'cpu*x'` gave a raw int() traceback; the CLI reports ConfigErrors cleanly."""
    from searche1.errors import ConfigError
    from searche1.retrieval.matmul_index import resolve_devices

    with pytest.raises(ConfigError, match="dense devices"):
        resolve_devices(devices)
    assert resolve_devices("cpu*3") == ["cpu"] * 3
