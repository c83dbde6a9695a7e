"""An LRU cache in front of any :class:`Retriever`.

:class:`CachedRetriever` keys results by ``(normalised query, topk)``, where normalising lowercases, collapses runs of
whitespace to one space and strips. Per ``search`` call, the cached queries are answered from memory and the misses
go to the inner retriever in **one** batched call, duplicates within the batch looked up once; the answer keeps the
caller's query order. The inner retriever is sent the *normalised* query text, so a cached answer is exactly what the
inner retriever gives for that key whatever the cache held before (results do not depend on which spelling of a
query arrived first); for the lowercasing BM25 and e5 retrievers this changes nothing.

Thread-safe: a lock guards the table and counters; the inner call runs outside the lock, so two threads missing the
same query at once may both fetch it (harmless, the second write wins). ``stats()`` reports hits, misses, hit rate and
size, also under metric keys (``retrieval/cache_hit_rate``, ...).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from searche1.errors import RetrievalError
from searche1.retrieval.base import Hit, Retriever


def normalize_query(query: str) -> str:
    """Lowercase, collapse whitespace, strip: ``'  Foo   BAR '`` -> ``'foo bar'``."""
    return " ".join(query.lower().split())


class CachedRetriever:
    """LRU-cached wrapper of ``inner`` holding at most ``maxsize`` (query, topk) entries (0 disables storing)."""

    def __init__(self, inner: Retriever, maxsize: int = 100_000) -> None:
        if maxsize < 0:
            raise ValueError(f"maxsize must be >= 0, got {maxsize}")
        self.inner = inner
        self.maxsize = maxsize
        self._table: OrderedDict[tuple[str, int], tuple[Hit, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def search(self, queries: list[str], topk: int = 3) -> list[list[Hit]]:
        keys = [(normalize_query(q), topk) for q in queries]
        found: dict[tuple[str, int], tuple[Hit, ...]] = {}
        missing: dict[tuple[str, int], None] = {}  # insertion-ordered set of unique misses
        with self._lock:
            for key in keys:
                if key in found or key in missing:
                    self._hits += 1  # a duplicate within the batch is served without another lookup
                    continue
                cached = self._table.get(key)
                if cached is None:
                    missing[key] = None
                    self._misses += 1
                else:
                    self._table.move_to_end(key)
                    found[key] = cached
                    self._hits += 1
        if missing:
            miss_keys = list(missing)
            results = self.inner.search([k[0] for k in miss_keys], topk)
            if len(results) != len(miss_keys):
                raise RetrievalError(
                    f"{type(self.inner).__name__}.search returned {len(results)} result lists "
                    f"for {len(miss_keys)} queries"
                )
            with self._lock:
                for key, hits in zip(miss_keys, results):
                    value = tuple(hits)
                    found[key] = value
                    if self.maxsize:
                        self._table[key] = value
                        self._table.move_to_end(key)
                while len(self._table) > self.maxsize:
                    self._table.popitem(last=False)
                    self._evictions += 1
        return [list(found[key]) for key in keys]

    def stats(self) -> dict[str, float]:
        """Counters since construction (or the last :meth:`clear`); hits count in-batch duplicates too."""
        with self._lock:
            total = self._hits + self._misses
            rate = self._hits / total if total else 0.0
            return {
                "hits": self._hits,
                "misses": self._misses,
                "hit_rate": rate,
                "size": len(self._table),
                "maxsize": self.maxsize,
                "evictions": self._evictions,
                "retrieval/cache_hit_rate": rate,
                "retrieval/cache_hits": self._hits,
                "retrieval/cache_misses": self._misses,
                "retrieval/cache_size": len(self._table),
            }

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._table.clear()
            self._hits = self._misses = self._evictions = 0

    def __len__(self) -> int:
        return len(self._table)

    def close(self) -> None:
        """Close the inner retriever if it can be closed (e.g. a :class:`RemoteRetriever`)."""
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> CachedRetriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
