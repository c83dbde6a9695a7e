"""Answer rewards: SQuAD normalisation, exact match and token F1, and a small registry of reward functions.

The Search-E1 reward is the exact match of the extracted answer against any gold answer after SQuAD normalisation
(lowercase, strip punctuation, drop the articles a/an/the, collapse whitespace). There is no format reward. F1 is
always computed and logged next to it.

Every reward function has the signature ``(pred: str | None, golds: list[str]) -> (reward, metrics)`` where ``pred`` is
the answer extracted from the response (``None`` when the episode produced no answer) and the metrics use the
namespaced keys ``reward/em``, ``reward/f1`` and ``reward/has_answer``.

Departures from the reference code (Search-R1's ``qa_em``): ``golds`` may be a single string; an empty gold list
scores 0; F1 follows SQuAD v2 for empty token lists (both empty = 1, one empty = 0). Pure Python, no torch.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable

from searche1.errors import ConfigError

__all__ = [
    "DEFAULT_REWARD",
    "REWARDS",
    "RewardFn",
    "answer_reward",
    "exact_match",
    "f1_reward",
    "f1_score",
    "get_reward",
    "normalize_answer",
    "register_reward",
]

_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, remove punctuation, remove articles (a/an/the), collapse whitespace."""
    s = s.lower().translate(_PUNCT_TABLE)
    s = _ARTICLES_RE.sub(" ", s)
    return " ".join(s.split())


def _as_list(golds: str | Iterable[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else [str(g) for g in golds]


def exact_match(pred: str | None, golds: str | Iterable[str]) -> float:
    """1.0 if the normalised ``pred`` equals the normalised form of any gold answer, else 0.0 (``None`` scores 0)."""
    if pred is None:
        return 0.0
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(g) for g in _as_list(golds)))


def _f1_single(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(pred: str | None, golds: str | Iterable[str]) -> float:
    """Token-level SQuAD F1 on normalised text, the maximum over gold answers (``None`` scores 0)."""
    if pred is None:
        return 0.0
    p = normalize_answer(pred).split()
    return max((_f1_single(p, normalize_answer(g).split()) for g in _as_list(golds)), default=0.0)


def _metrics(pred: str | None, golds: str | Iterable[str]) -> dict[str, float]:
    golds = _as_list(golds)
    return {
        "reward/em": exact_match(pred, golds),
        "reward/f1": f1_score(pred, golds),
        "reward/has_answer": float(pred is not None and pred.strip() != ""),
    }


def answer_reward(pred: str | None, golds: str | Iterable[str]) -> tuple[float, dict[str, float]]:
    """The Search-E1 reward: exact match (0.0 when ``pred`` is None), with EM, F1 and has-answer metrics."""
    m = _metrics(pred, golds)
    return m["reward/em"], m


def f1_reward(pred: str | None, golds: str | Iterable[str]) -> tuple[float, dict[str, float]]:
    """Ablation: token F1 as the reward, with the same metrics as :func:`answer_reward`."""
    m = _metrics(pred, golds)
    return m["reward/f1"], m


RewardFn = Callable[[str | None, list[str]], tuple[float, dict[str, float]]]

DEFAULT_REWARD = "em"
REWARDS: dict[str, RewardFn] = {"em": answer_reward, "f1": f1_reward}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator that adds a reward function to the registry under ``name`` (an existing name is an error)."""

    def deco(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ConfigError(f"reward '{name}' is already registered")
        REWARDS[name] = fn
        return fn

    return deco


def get_reward(name: str = DEFAULT_REWARD) -> RewardFn:
    """The reward function registered as ``name``; an unknown name fails listing the valid ones."""
    try:
        return REWARDS[name]
    except KeyError:
        valid = ", ".join(sorted(REWARDS))
        raise ConfigError(f"unknown reward '{name}' (fix: use one of: {valid})") from None
