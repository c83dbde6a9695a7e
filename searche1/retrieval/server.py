"""HTTP retrieval server, wire-compatible with Search-R1's ``retrieval_server.py``.

``create_app(retriever)`` builds a FastAPI app around any :class:`~searche1.retrieval.base.Retriever` (app factory,
retriever injected, so tests and benchmarks can wrap a fake). Endpoints:

* ``POST /retrieve`` takes exactly the Search-R1 request ``{"queries": [...], "topk": 3, "return_scores": true}`` and
  answers ``{"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}`` -- one ranked list per query; with
  ``return_scores`` false (Search-R1's default, so ours) each hit is the bare document ``{"id", "contents"}``, as
  Search-R1 answers it. :class:`~searche1.retrieval.client.RemoteRetriever` always asks for scores.
* ``GET /health`` answers ``{"status": "ok", **info, "queries_served": n}``.

Departures from Search-R1's server: requests are size-limited (:class:`ServerLimits`) and strictly validated (wrong
types, unknown keys, an empty or oversized batch, an over-long query, ``topk`` out of range, a body too large); every
rejection is a 4xx with ``{"detail": "<message naming the field and the limit>"}`` and the server keeps serving. A
retriever exception is a 500 with a message (a proxy's failed upstream: 502), not a crash. ``topk: null`` means
the default (3), as in Search-R1. The retriever runs in the threadpool so the event loop keeps answering
``/health`` during a long search. :func:`serve` binds 127.0.0.1 unless told otherwise; :func:`start_in_thread` runs
a server in a background thread for tests and benchmarks.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from searche1.errors import ConfigError, RetrievalError
from searche1.retrieval.base import Retriever

log = logging.getLogger(__name__)

DEFAULT_TOPK = 3


@dataclass(frozen=True)
class ServerLimits:
    """Per-request limits; a request over any of them is rejected with a 4xx naming the field and the limit."""

    max_queries: int = 512  # queries per request
    max_query_chars: int = 2048  # characters per query
    max_topk: int = 50
    max_body_bytes: int = 1_000_000

    def __post_init__(self) -> None:
        for name in ("max_queries", "max_query_chars", "max_topk", "max_body_bytes"):
            if getattr(self, name) < 1:
                option = "--" + name.replace("_", "-")
                raise ConfigError(f"ServerLimits.{name} ({option}): must be >= 1, got {getattr(self, name)}")


class RetrieveRequest(BaseModel):
    """The Search-R1 ``/retrieve`` request body. Strict: no type coercion, no unknown keys."""

    model_config = ConfigDict(strict=True, extra="forbid")

    queries: list[str]
    topk: int | None = DEFAULT_TOPK
    return_scores: bool = False


class _Reject(Exception):
    """A request rejected with an HTTP status and a one-line detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ""
        for item in e["loc"]:
            loc += f"[{item}]" if isinstance(item, int) else (f".{item}" if loc else str(item))
        parts.append(f"field '{loc or 'body'}': {e['msg']}")
    return "invalid request: " + "; ".join(parts)


async def _read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing (413) from the Content-Length header or once the bytes read pass ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise _Reject(400, f"invalid Content-Length header {declared!r}") from None
        if n > limit:
            raise _Reject(413, f"request body is {n} bytes, over the limit of {limit} bytes (max_body_bytes)")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _Reject(413, f"request body is over the limit of {limit} bytes (max_body_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes, limits: ServerLimits) -> RetrieveRequest:
    try:
        payload = json.loads(body)
    except RecursionError:
        raise _Reject(400, "request body is nested too deeply to parse (arrays/objects inside each other); "
                           "send {\"queries\": [...], \"topk\": k}") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer over Python's 4,300-digit limit
        raise _Reject(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(payload, dict):
        raise _Reject(422, f"request body must be a JSON object with 'queries', got {type(payload).__name__}")
    try:
        req = RetrieveRequest.model_validate(payload)
    except ValidationError as e:
        raise _Reject(422, _format_validation_error(e)) from None
    if req.topk is None:
        req.topk = DEFAULT_TOPK
    n = len(req.queries)
    if n == 0:
        raise _Reject(422, "field 'queries': must be a non-empty list of strings")
    if n > limits.max_queries:
        raise _Reject(
            422, f"field 'queries': {n} queries is over the limit of {limits.max_queries} per request "
            "(max_queries); split the batch"
        )
    for i, q in enumerate(req.queries):
        if len(q) > limits.max_query_chars:
            raise _Reject(
                422, f"field 'queries[{i}]': query has {len(q)} characters, over the limit of "
                f"{limits.max_query_chars} (max_query_chars)"
            )
    if not 1 <= req.topk <= limits.max_topk:
        raise _Reject(
            422, f"field 'topk': {req.topk} is out of range, must be between 1 and {limits.max_topk} (max_topk)"
        )
    return req


_REQUEST_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": RetrieveRequest.model_json_schema()}},
    }
}


def create_app(retriever: Retriever, limits: ServerLimits = ServerLimits(), info: dict | None = None) -> FastAPI:
    """Build the retrieval app around ``retriever``. ``info`` is merged into ``/health`` (index name, size, ...)."""
    app = FastAPI(title="searche1 retrieval server", version="1")
    info = dict(info or {})
    state = {"queries_served": 0, "requests": 0, "errors": 0}
    app.state.retriever = retriever
    app.state.limits = limits
    app.state.counters = state

    def reject(status: int, detail: str) -> JSONResponse:
        log.info("rejected /retrieve (%d): %s", status, detail)
        return JSONResponse({"detail": detail}, status_code=status)

    @app.post("/retrieve", openapi_extra=_REQUEST_SCHEMA)
    async def retrieve(request: Request) -> JSONResponse:
        state["requests"] += 1
        try:
            req = _parse(await _read_body(request, limits.max_body_bytes), limits)
        except _Reject as r:
            return reject(r.status, r.detail)
        topk = req.topk or DEFAULT_TOPK
        try:
            results = await run_in_threadpool(retriever.search, req.queries, topk)
            if len(results) != len(req.queries):
                raise RuntimeError(f"retriever returned {len(results)} result lists for {len(req.queries)} queries")
            body = {"result": [[h.to_searchr1(req.return_scores) for h in hits[:topk]] for hits in results]}
            response = JSONResponse(body)
        except Exception as e:  # noqa: BLE001 -- any retriever failure is a 500, the server keeps serving
            state["errors"] += 1
            if isinstance(e, RetrievalError):  # an upstream down (proxy): one line per request, not a traceback
                log.error("retriever failed on a batch of %d queries: %s", len(req.queries), e)
            else:
                log.exception("retriever failed on a batch of %d queries", len(req.queries))
            # a proxy whose upstream failed is a bad gateway (clients retry 502 as they do 500)
            status = 502 if isinstance(e, RetrievalError) and info.get("kind") == "proxy" else 500
            return JSONResponse({"detail": f"retriever failed: {type(e).__name__}: {e}"}, status_code=status)
        state["queries_served"] += len(req.queries)
        return response

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **info, "queries_served": state["queries_served"]}

    return app


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run ``app`` with uvicorn in the foreground until interrupted. Binds localhost unless ``host`` says otherwise."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)


class ServerHandle:
    """A uvicorn server running in a daemon thread; ``stop()`` shuts it down and joins the thread."""

    def __init__(self, server: Any, thread: threading.Thread, host: str, port: int) -> None:
        self.server = server
        self.thread = thread
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise RuntimeError(f"retrieval server at {self.url} did not stop within {timeout} s")

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0, log_level: str = "warning"
) -> ServerHandle:
    """Start ``app`` under uvicorn in a background thread and return once it accepts connections.

    ``port=0`` picks a free port (read it back from ``handle.port``). Raises ``RuntimeError`` if the server fails to
    start (e.g. the port is taken) within ``timeout`` seconds.
    """
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as e:  # noqa: BLE001 -- uvicorn calls sys.exit on bind failure
            failure.append(e)

    thread = threading.Thread(target=run, name=f"retrieval-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if failure or not thread.is_alive():
            why = failure[0] if failure else "thread exited"
            raise RuntimeError(f"retrieval server failed to start on {host}:{port}: {why!r}")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"retrieval server did not start on {host}:{port} within {timeout} s")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1] if port == 0 else port
    return ServerHandle(server, thread, host, bound)
