"""Retrieval quality: answer recall@k (a retrieved passage contains a gold answer, after SQuAD normalisation)."""

from __future__ import annotations

from searche1.data.types import QAExample
from searche1.retrieval.base import Retriever
from searche1.rewards import normalize_answer


def has_answer(text: str, answers: list[str]) -> bool:
    """True when some normalised gold answer occurs in the normalised text as a whole-word span."""
    hay = f" {normalize_answer(text)} "
    return any((n := normalize_answer(a)) and f" {n} " in hay for a in answers)


def answer_recall(retriever: Retriever, examples: list[QAExample], topk: int = 3, batch_size: int = 256) -> float:
    """Fraction of questions whose own text, used as the query, retrieves a passage holding a gold answer."""
    if not examples:
        return float("nan")
    found = 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        for ex, hits in zip(chunk, retriever.search([e.question for e in chunk], topk)):
            found += any(has_answer(h.contents, ex.answers) for h in hits)
    return found / len(examples)
