"""HTTP client for a Search-R1-compatible retrieval server, implementing the :class:`Retriever` protocol.

:class:`RemoteRetriever` posts ``{"queries", "topk", "return_scores": true}`` to ``<url>/retrieve`` over one keep-alive
``httpx.Client`` (thread-safe, so rollout workers may share it). Large batches are split into chunks of ``batch_size``
(keep it at or below the server's ``max_queries``). Connection errors, timeouts and 5xx answers are retried with
bounded exponential backoff (``backoff * 2**i`` capped at ``max_backoff``, +-10% jitter); a 4xx is the caller's fault
and raises :class:`RetrievalError` at once with the server's detail. When the server stays down the error says where
it was looked for and how to start it. Responses are checked (one list per query, each hit with ``document.id`` and
``document.contents``) before they become :class:`Hit` s; a ``document`` with ``title``/``text`` instead of
``contents`` (some Search-R1 corpora) is accepted and joined FlashRAG-style, and a ``document`` without ``id``
(Search-R1's pyserini BM25 returns ``{title, text, contents}``) gets a stable id from its contents
(:func:`content_id`). A hit that is the bare document (Search-R1's ``return_scores: false`` shape) is read too.
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any

import httpx

from searche1.errors import RetrievalError
from searche1.retrieval.base import Hit, join_contents

_START_HINT = "start it with `searche1 serve --index DIR`"


class _Retryable(Exception):
    """A failure worth retrying (transport error, timeout, 5xx); ``unreachable``: no connection could be made."""

    def __init__(self, message: str, unreachable: bool) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class RemoteRetriever:
    """Retriever backed by a retrieval server at ``url`` (``http://host:port``, with or without ``/retrieve``).

    ``retries`` is the number of retries after the first attempt, so a call makes at most ``retries + 1`` attempts
    and waits at most about ``sum(min(max_backoff, backoff * 2**i))`` between them, plus ``timeout`` per attempt.
    ``transport`` is an optional ``httpx`` transport (tests inject ``httpx.MockTransport``).
    """

    def __init__(
        self,
        url: str,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        batch_size: int = 512,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        base = url.rstrip("/")
        if base.endswith("/retrieve"):
            base = base[: -len("/retrieve")]
        if not base.startswith(("http://", "https://")):
            base = "http://" + base
        self.url = base
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.batch_size = batch_size
        self._client = httpx.Client(timeout=httpx.Timeout(timeout), transport=transport)

    # -- Retriever protocol ------------------------------------------------------------------------------------
    def search(self, queries: list[str], topk: int = 3) -> list[list[Hit]]:
        """Ranked hits per query, in query order; batches over ``batch_size`` go out as several requests."""
        queries = list(queries)
        out: list[list[Hit]] = []
        for start in range(0, len(queries), self.batch_size):
            chunk = queries[start : start + self.batch_size]
            payload = {"queries": chunk, "topk": topk, "return_scores": True}
            data = self._request("POST", "/retrieve", json=payload)
            out.extend(self._parse_result(data, len(chunk)))
        return out

    def health(self) -> dict[str, Any]:
        """The server's ``/health`` answer (``{"status": "ok", ..., "queries_served": n}``), with the same retries."""
        data = self._request("GET", "/health")
        if not isinstance(data, dict):
            raise RetrievalError(f"retrieval server at {self.url} sent a malformed /health answer: {data!r:.200}")
        return data

    # -- plumbing ----------------------------------------------------------------------------------------------
    def _delay(self, attempt: int) -> float:
        d = min(self.max_backoff, self.backoff * (2**attempt))
        return max(0.0, d * random.uniform(0.9, 1.1))

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        attempts = self.retries + 1
        last: _Retryable | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self._delay(attempt - 1))
            try:
                return self._once(method, path, **kwargs)
            except _Retryable as e:
                last = e
        assert last is not None
        if last.unreachable:
            raise RetrievalError(
                f"retrieval server at {self.url} unreachable after {attempts} attempts: {last}; {_START_HINT}"
            )
        raise RetrievalError(f"retrieval server at {self.url} failed after {attempts} attempts: {last}")

    def _once(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self._client.request(method, self.url + path, **kwargs)
        except httpx.TimeoutException as e:
            unreachable = isinstance(e, httpx.ConnectTimeout)
            raise _Retryable(f"timed out after {self.timeout} s ({type(e).__name__})", unreachable) from e
        except httpx.TransportError as e:
            raise _Retryable(f"{type(e).__name__}: {e}", unreachable=True) from e
        if r.status_code >= 500:
            raise _Retryable(f"HTTP {r.status_code}: {_detail(r)}", unreachable=False)
        if r.status_code >= 400:
            raise RetrievalError(
                f"retrieval server at {self.url} rejected {method} {path} (HTTP {r.status_code}): {_detail(r)}"
            )
        try:
            return r.json()
        except ValueError:
            raise RetrievalError(
                f"retrieval server at {self.url} answered {method} {path} with non-JSON: {r.text[:200]!r}"
            ) from None

    def _parse_result(self, data: Any, n: int) -> list[list[Hit]]:
        def bad(why: str) -> RetrievalError:
            return RetrievalError(f"retrieval server at {self.url} sent a malformed /retrieve answer: {why}")

        if not isinstance(data, dict) or not isinstance(data.get("result"), list):
            raise bad(f"expected an object with a 'result' list, got {data!r:.200}")
        result = data["result"]
        if len(result) != n:
            raise bad(f"{len(result)} result lists for {n} queries")
        out: list[list[Hit]] = []
        for i, hits in enumerate(result):
            if not isinstance(hits, list):
                raise bad(f"result[{i}] is {type(hits).__name__}, expected a list")
            row = []
            for j, h in enumerate(hits):
                if not isinstance(h, dict):
                    raise bad(f"result[{i}][{j}] is {type(h).__name__}, expected an object: {h!r:.200}")
                doc = h.get("document", h)  # return_scores false: the hit is the document itself
                if not isinstance(doc, dict):
                    raise bad(f"result[{i}][{j}] has a non-object document: {h!r:.200}")
                contents = doc.get("contents")
                if contents is None and ("title" in doc or "text" in doc):
                    contents = join_contents(str(doc.get("title", "")), str(doc.get("text", "")))
                if not isinstance(contents, str):
                    raise bad(f"result[{i}][{j}] lacks a string document.contents: {h!r:.200}")
                try:
                    score = float(h.get("score", 0.0))
                except (TypeError, ValueError):
                    raise bad(f"result[{i}][{j}] has a non-numeric score {h.get('score')!r}") from None
                doc_id = doc.get("id")
                row.append(Hit(id=content_id(contents) if doc_id is None else str(doc_id), contents=contents,
                               score=score))
            out.append(row)
        return out

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteRetriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteRetriever({self.url!r}, timeout={self.timeout}, retries={self.retries})"


def content_id(contents: str) -> str:
    """A stable id for a document served without one (Search-R1's pyserini BM25 answers ``{title, text,
    contents}``): ``sha1-`` and the first 16 hex digits of the SHA-1 of its contents."""
    return "sha1-" + hashlib.sha1(contents.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _detail(r: httpx.Response) -> str:
    try:
        body = r.json()
        if isinstance(body, dict) and "detail" in body:
            return str(body["detail"])
    except ValueError:
        pass
    return r.text[:500] or r.reason_phrase
