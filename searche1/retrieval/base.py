"""The retrieval interface every retriever implements: in-process BM25, dense, the HTTP client and the cache.

A retriever maps a batch of query strings to a ranked list of :class:`Hit` per query. Batching is part of the
interface because a rollout turn sends all of its pending searches in one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Hit:
    """One retrieved passage.

    ``contents`` is the FlashRAG convention: the title on the first line (optionally in double quotes), the text after.
    """

    id: str
    contents: str
    score: float = 0.0

    @property
    def title(self) -> str:
        return split_contents(self.contents)[0]

    @property
    def text(self) -> str:
        return split_contents(self.contents)[1]

    def to_searchr1(self, with_score: bool = True) -> dict:
        """The Search-R1 server's JSON shape for one hit: ``{"document": {"id", "contents"}, "score"}`` with the score,
        else the bare document ``{"id", "contents"}`` (Search-R1 answers ``return_scores: false`` that way)."""
        doc = {"id": self.id, "contents": self.contents}
        return {"document": doc, "score": float(self.score)} if with_score else doc


def split_contents(contents: str) -> tuple[str, str]:
    """Split FlashRAG ``contents`` into (title, text); the title loses surrounding double quotes."""
    title, sep, text = contents.partition("\n")
    if not sep:
        return "", contents.strip()
    return title.strip().strip('"').strip(), text.strip()


def join_contents(title: str, text: str) -> str:
    """Inverse of :func:`split_contents`: FlashRAG's ``"Title"\\ntext`` form."""
    return f'"{title}"\n{text}' if title else text


@runtime_checkable
class Retriever(Protocol):
    """Anything with a batched ``search``. Implementations must return exactly ``len(queries)`` lists."""

    def search(self, queries: list[str], topk: int = 3) -> list[list[Hit]]: ...
