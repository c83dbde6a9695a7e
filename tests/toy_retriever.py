"""A naive word-overlap retriever over five hand-made passages, shared by the server and client tests."""

from __future__ import annotations

from searche1.retrieval.base import Hit

PASSAGES = [
    ("0", '"Paris"\nParis is the capital of France.'),
    ("1", '"Berlin"\nBerlin is the capital of Germany.'),
    ("2", '"Eiffel Tower"\nThe Eiffel Tower is in Paris, France.'),
    ("3", '"Danube"\nThe Danube flows through Vienna and Budapest.'),
    ("4", '"Python"\nPython is a programming language.'),
]


class OverlapRetriever:
    """Scores = shared words with the query; ties broken by passage order. Records calls and batches;
    ``fail=True`` makes every search raise."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls = 0
        self.batches: list[list[str]] = []

    @staticmethod
    def _words(s: str) -> set[str]:
        return set("".join(c if c.isalnum() else " " for c in s.lower()).split())

    def search(self, queries: list[str], topk: int = 3) -> list[list[Hit]]:
        self.calls += 1
        self.batches.append(list(queries))
        if self.fail:
            raise RuntimeError("index is broken")
        out = []
        for q in queries:
            qw = self._words(q)
            scored = [(len(qw & self._words(c)), i, pid, c) for i, (pid, c) in enumerate(PASSAGES)]
            scored.sort(key=lambda t: (-t[0], t[1]))
            out.append([Hit(pid, c, float(s)) for s, _, pid, c in scored[:topk]])
        return out
