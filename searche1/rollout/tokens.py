"""Token ids of the pieces an episode is made of: the agent prompt and a retrieved block.

Rollout engines and the format warm-up both build sequences from these two functions, so demonstrations and
rollouts have exactly the same token layout.

Segments are encoded one by one (never the decoded episode re-encoded), which matters for SentencePiece tokenizers
(Llama, Mistral):

* a prompt starts with the tokenizer's BOS when the tokenizer adds one by default (:func:`encode_prompts`; also
  for the plain, non-chat prompt), once: a chat template that writes ``{{ bos_token }}`` is not given a second;
* a retrieved block continues a sequence, so the word-boundary ``'▁'`` such a tokenizer puts in front of every text
  it encodes is dropped (:func:`encode_continuations`): the model sees ``</search>\\n\\n<information>``, not
  ``</search> \\n\\n<information>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from searche1 import protocol
from searche1.retrieval.base import Hit
from searche1.rollout.types import RolloutConfig


def encode(tokenizer: Any, text: str) -> list[int]:
    return encode_batch(tokenizer, [text])[0]


def encode_batch(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """:func:`encode` of many texts in one tokenizer call: a fast tokenizer encodes them in parallel (on a 2-core
    CPU ~2x faster per text than one call each: its BPE costs ~3 us a token)."""
    return [list(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]] if texts else []


def bos_prefix(tokenizer: Any) -> list[int]:
    """``[bos_token_id]`` when the tokenizer puts BOS in front of a text it encodes with its defaults (Llama- and
    Mistral-style tokenizers, ``add_bos_token=True``), else ``[]`` (GPT-2-style BPE such as SmolLM2, Qwen)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    return [bos] if list(tokenizer("a")["input_ids"][:1]) == [bos] else []


def encode_prompts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Rendered prompts (whole sequences' starts) as ids: :func:`encode_batch` plus the tokenizer's BOS
    (:func:`bos_prefix`) where the text does not already encode to it (a chat template holding ``{{ bos_token }}``),
    so a prompt has exactly one BOS, as ``tokenizer(text)`` gives it. Every prompt a model samples from or is
    scored on goes through here: the agent prompt, the OFSD teacher prompt."""
    bos = bos_prefix(tokenizer)
    return [bos + ids if bos and ids[:1] != bos else ids for ids in encode_batch(tokenizer, texts)]


def _word_boundary_prefix(tokenizer: Any) -> bool:
    """Does the tokenizer put a SentencePiece word boundary ('▁') in front of every text (``add_dummy_prefix``)?"""
    ids = encode(tokenizer, "<")
    return bool(ids) and str(tokenizer.convert_ids_to_tokens(ids[0])).startswith("▁")


def encode_continuations(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """:func:`encode_batch` of texts that continue a sequence. A tokenizer with a word-boundary prefix (Llama,
    Mistral) encodes ``'\\n\\n<information>'`` as ``'▁', '\\n', ...`` and ``'</information>'`` as ``'▁</', ...``,
    a space that is not in the text; where a text does not start with a space that prefix is dropped: a lone ``'▁'``
    id is removed, a merged piece is replaced by the piece without it (kept when the vocabulary lacks that piece).
    Other tokenizers are unaffected."""
    out = encode_batch(tokenizer, texts)
    if not _word_boundary_prefix(tokenizer):
        return out
    for ids, text in zip(out, texts):
        piece = str(tokenizer.convert_ids_to_tokens(ids[0])) if ids else ""
        if text.startswith(" ") or not piece.startswith("▁"):
            continue
        if piece == "▁":
            del ids[0]
            continue
        alt = tokenizer.convert_tokens_to_ids(piece[1:])
        if alt is not None and alt != tokenizer.unk_token_id and tokenizer.convert_ids_to_tokens(alt) == piece[1:]:
            ids[0] = alt
    return out


def generation_eos_ids(generation_config: Any) -> tuple[int, ...]:
    """The EOS ids of a model's generation config (an id, a list of ids, or none), as a tuple."""
    eos = getattr(generation_config, "eos_token_id", None)
    return tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))


class StopCheck:
    """``check(turn_tokens)``: does the turn end with a stop string (``</search>``, ``</answer>``)? A stop string
    can only complete on a token whose text holds its last character ('>'), so the last 16 tokens are decoded only
    after such a token (memoised per token id): one tokenizer call per token otherwise. Both engines cut turns
    with it."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self._tails = {s[-1] for s in protocol.TURN_STOP_STRINGS}
        self._memo: dict[int, bool] = {}

    def __call__(self, turn_tokens: list[int]) -> bool:
        return self._may_end(turn_tokens[-1]) and self._window_stops(turn_tokens)

    def _may_end(self, t: int) -> bool:
        hit = self._memo.get(t)
        if hit is None:
            hit = self._memo[t] = any(c in self.tok.decode([t]) for c in self._tails)
        return hit

    def _window_stops(self, turn_tokens: list[int]) -> bool:
        return any(s in self.tok.decode(turn_tokens[-16:]) for s in protocol.TURN_STOP_STRINGS)

    def first_end(self, ids: list[int], limit: int, eos_ids: set[int]) -> tuple[int, str] | None:
        """A whole turn at once (the vLLM engine): ``(k, "eos" | "stop")`` for the first of ``ids[:limit]`` that is an
        EOS id or completes a stop string (per token, EOS first: the rule of ``__call__`` token by token), else None.
        One dict lookup per token; the window is decoded only after a possible stop tail."""
        memo = self._memo
        for k in range(min(limit, len(ids))):
            t = ids[k]
            if t in eos_ids:
                return k, "eos"
            hit = memo.get(t)  # inline: a method call per token would cost more than the lookup
            if hit is None:
                hit = self._may_end(t)
            if hit and self._window_stops(ids[:k + 1]):
                return k, "stop"
        return None


def prompt_batch(tokenizer: Any, questions: Sequence[str], cfg: RolloutConfig) -> list[list[int]]:
    """:func:`prompt_ids` of each question, rendered once per distinct question (a GRPO group repeats one question
    G times; the chat template and the encoding cost ~1 ms a prompt on a CPU) and encoded in one batch. Repeats
    share one list: copy before changing it."""
    distinct = list(dict.fromkeys(questions))
    texts = [protocol.build_prompt(q, tokenizer, chat=cfg.chat, max_searches=cfg.max_searches) for q in distinct]
    ids = dict(zip(distinct, encode_prompts(tokenizer, texts)))
    return [ids[q] for q in questions]


def prompt_ids(tokenizer: Any, question: str, cfg: RolloutConfig) -> list[int]:
    """The agent's inference prompt (chat template when the tokenizer has one, unless ``cfg.chat`` is False), with
    the tokenizer's BOS when it adds one (:func:`encode_prompts`)."""
    return prompt_batch(tokenizer, [question], cfg)[0]


def info_ids(tokenizer: Any, hits: Sequence[Hit], cfg: RolloutConfig) -> list[int]:
    """The formatted ``<information>`` block; over ``max_info_tokens`` ids the passages are cut, never the closing
    tag, so the block has exactly ``max_info_tokens`` ids and stays closed."""
    return info_ids_batch(tokenizer, [hits], cfg)[0]


def info_ids_batch(tokenizer: Any, hit_lists: Sequence[Sequence[Hit]], cfg: RolloutConfig) -> list[list[int]]:
    """:func:`info_ids` of each hit list (a turn's searches), every passage and block encoded in one batch. Equal
    hit lists (the same passages in the same order: a GRPO group's episodes often ask the same query) are formatted
    and encoded once; each gets its own copy of the ids."""
    keys = [tuple(h.contents for h in hits) for hits in hit_lists]
    first = dict(zip(keys, hit_lists))  # one hit list per distinct key, in order of first appearance
    blocks = encode_continuations(tokenizer, protocol.format_information_batch(list(first.values()), tokenizer,
                                                                              cfg.max_doc_tokens))
    tail = None
    for k, ids in enumerate(blocks):
        if len(ids) > cfg.max_info_tokens:
            tail = tail or encode_continuations(tokenizer, [protocol.INFO_CLOSE + "\n\n"])[0]
            blocks[k] = ids[: max(0, cfg.max_info_tokens - len(tail))] + tail
    by_key = dict(zip(first, blocks))
    return [list(by_key[key]) for key in keys]


def info_blocks(tokenizer: Any, results: Sequence[Any], cfg: RolloutConfig) -> list[Any]:
    """A turn's retrieval results (hit lists, or the exception of a failed search) as their blocks' ids, all encoded
    in one batch; an exception stays as it is."""
    ok = [k for k, r in enumerate(results) if not isinstance(r, Exception)]
    out = list(results)
    for k, ids in zip(ok, info_ids_batch(tokenizer, [results[k] for k in ok], cfg)):
        out[k] = ids
    return out
