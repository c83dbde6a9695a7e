"""Peers of the retrieval benchmark: the HTTP server load test and rank-bm25 (split out of retrieval.py)."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from contextlib import contextmanager

import numpy as np
from common import Timer, percentile, rnd  # noqa: E402
from searche1.data.types import Passage  # noqa: E402
from searche1.retrieval.base import Hit  # noqa: E402
from searche1.retrieval.bm25 import BM25Retriever  # noqa: E402
from searche1.retrieval.cache import CachedRetriever  # noqa: E402

TOPK = 3  # passages per query, as in retrieval.py


# ---- 3. server ----------------------------------------------------------------------------------------------------
def _server_child(conn, retriever, cached: bool) -> None:
    from searche1.retrieval.server import create_app, start_in_thread

    inner = CachedRetriever(retriever) if cached else retriever
    handle = start_in_thread(create_app(inner, info={"benchmark": True}))
    conn.send(handle.port)
    try:
        conn.recv()  # any message, or EOF when the parent goes away, stops the server
    except EOFError:
        pass
    handle.stop()


@contextmanager
def server_process(retriever, cached: bool = False):
    """The retrieval server in a forked child process (so the client threads do not share its GIL); yields the URL."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_server_child, args=(child, retriever, cached), daemon=True)
    proc.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("retrieval server child did not start within 60 s")
        port = parent.recv()
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            parent.send("stop")
        except (BrokenPipeError, OSError):
            pass
        proc.join(15)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


def load_test(url: str, questions: list[str], batch: int, clients: int, seconds: float) -> dict:
    """``clients`` threads, each with its own RemoteRetriever, send ``batch``-query requests for ``seconds``."""
    from searche1.retrieval.client import RemoteRetriever

    n = len(questions)
    deadline = [0.0]
    t_start = [0.0]

    def go() -> None:  # runs once, when every client has warmed up and the main thread arrived
        t_start[0] = time.perf_counter()
        deadline[0] = t_start[0] + seconds

    barrier = threading.Barrier(clients + 1, action=go)
    lat: list[list[float]] = [[] for _ in range(clients)]
    done = [0] * clients
    ends = [0.0] * clients
    errors: list[str] = []

    def worker(i: int) -> None:
        rr = RemoteRetriever(url, timeout=60, retries=0, batch_size=max(batch, 1))
        pos = i * n // clients
        try:
            for _ in range(3):  # warm-up: connection, first requests
                rr.search(questions[pos : pos + batch] or questions[:batch], TOPK)
            barrier.wait()
            while time.perf_counter() < deadline[0]:
                qs = [questions[(pos + j) % n] for j in range(batch)]
                pos += batch
                t0 = time.perf_counter()
                res = rr.search(qs, TOPK)
                lat[i].append(time.perf_counter() - t0)
                if len(res) != batch:
                    raise RuntimeError(f"{len(res)} results for {batch} queries")
                done[i] += batch
            ends[i] = time.perf_counter()
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}")
            if not barrier.broken:
                barrier.abort()
        finally:
            rr.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        barrier.wait(timeout=120)
    except threading.BrokenBarrierError:
        pass
    for t in threads:
        t.join(seconds + 120)
    if errors:
        raise RuntimeError(f"load test failed: {errors[0]}")
    elapsed = max(ends) - t_start[0]
    all_lat = [x for xs in lat for x in xs]
    return {
        "clients": clients,
        "queries_per_request": batch,
        "seconds": rnd(elapsed, 2),
        "requests": len(all_lat),
        "queries": sum(done),
        "qps": rnd(sum(done) / elapsed, 1),
        "requests_per_s": rnd(len(all_lat) / elapsed, 1),
        "p50_ms": rnd(percentile(all_lat, 50) * 1e3, 2),
        "p99_ms": rnd(percentile(all_lat, 99) * 1e3, 2),
    }


# ---- 4. rank-bm25 ---------------------------------------------------------------------------------------------------
class RankBM25Retriever:
    """``rank_bm25.BM25Okapi`` behind the Retriever interface: full score vector, top-k by argpartition."""

    def __init__(self, passages: list[Passage], tokenize) -> None:
        from rank_bm25 import BM25Okapi

        self.passages = passages
        self.tokenize = tokenize
        with Timer() as t:
            tokens = [tokenize(p.contents) for p in passages]
        self.tokenize_s = t.seconds
        with Timer() as t:
            self.model = BM25Okapi(tokens)  # k1=1.5, b=0.75, epsilon=0.25 (its defaults)
        self.index_s = t.seconds
        self.sample_tokens = tokens[:: max(1, len(tokens) // 200)]

    def search(self, queries: list[str], topk: int = 3) -> list[list[Hit]]:
        k = min(topk, len(self.passages))
        out = []
        for q in queries:
            s = self.model.get_scores(self.tokenize(q))
            top = np.argpartition(-s, k - 1)[:k]
            top = top[np.argsort(-s[top], kind="stable")]
            out.append([Hit(self.passages[i].id, self.passages[i].contents, float(s[i])) for i in top.tolist()])
        return out


def make_rank_bm25_tokenizer():
    import re

    import Stemmer
    from bm25s.stopwords import STOPWORDS_EN

    split = re.compile(r"(?u)\b\w\w+\b").findall
    stem = Stemmer.Stemmer("english").stemWords
    stop = set(STOPWORDS_EN)

    def tokenize(text: str) -> list[str]:
        return stem([w for w in split(text.lower()) if w not in stop])

    return tokenize


def tokens_match_bm25s(bm25: BM25Retriever, rb: RankBM25Retriever) -> bool | None:
    """True when bm25s' tokenizer gives the same stems as ours on a sample of passages (None if not checkable)."""
    tok = getattr(bm25, "_tokenizer", None)
    if tok is None or not hasattr(tok, "stem_to_sid"):
        return None
    sid_to_stem = {v: k for k, v in tok.stem_to_sid.items()}
    step = max(1, len(bm25.passages) // 200)
    sample = [p.contents for p in bm25.passages[::step]]
    ids = tok.tokenize(sample, update_vocab=False, return_as="ids", show_progress=False)
    theirs = [[sid_to_stem[i] for i in row if sid_to_stem.get(i)] for row in ids]
    return theirs == rb.sample_tokens[: len(theirs)]
