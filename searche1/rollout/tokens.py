"""Token ids of the pieces an episode is made of: the agent prompt and a retrieved block.

Rollout engines and the format warm-up both build sequences from these two functions, so demonstrations and
rollouts have exactly the same token layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from searche1 import protocol
from searche1.retrieval.base import Hit
from searche1.rollout.types import RolloutConfig


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_batch(make: Any, questions: Any) -> list[list[int]]:
    """``make(question)`` for each question, rendered once per distinct question (a GRPO group repeats one question
    G times; the chat template costs ~1 ms a prompt on a CPU). Repeats share one list: copy before changing it."""
    memo: dict[str, list[int]] = {}
    return [memo[q] if q in memo else memo.setdefault(q, make(q)) for q in questions]


def prompt_ids(tokenizer: Any, question: str, cfg: RolloutConfig) -> list[int]:
    """The agent's inference prompt (chat template when the tokenizer has one, unless ``cfg.chat`` is False)."""
    return encode(tokenizer, protocol.build_prompt(question, tokenizer, chat=cfg.chat, max_searches=cfg.max_searches))


def info_ids(tokenizer: Any, hits: Sequence[Hit], cfg: RolloutConfig) -> list[int]:
    """The formatted ``<information>`` block; over ``max_info_tokens`` ids the passages are cut, never the closing
    tag, so the block has exactly ``max_info_tokens`` ids and stays closed."""
    ids = encode(tokenizer, protocol.format_information(hits, tokenizer, max_doc_tokens=cfg.max_doc_tokens))
    if len(ids) > cfg.max_info_tokens:
        tail = encode(tokenizer, protocol.INFO_CLOSE + "\n\n")
        ids = ids[: max(0, cfg.max_info_tokens - len(tail))] + tail
    return ids
