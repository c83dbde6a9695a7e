"""Constrained decoding at turn starts: a turn may only open with ``<search>``, ``<answer>`` or ``<think>``.

A logits hook for :class:`~searche1.rollout.hf_engine.HFEngine`. While the text of the current turn (leading
whitespace ignored) is still a proper prefix of an allowed opener, only tokens that keep it a prefix, or complete an
opener, may be sampled; once an opener is complete the policy is free. Pure-whitespace tokens and EOS are not allowed
at a turn start (so a turn cannot stall or end without acting). A token's text is read in context
(:func:`continuation_texts`), so SentencePiece word-boundary pieces (``'▁search'``) count with their space.

Sampling uses the constrained distribution, while the recorded log-probs stay those of the unconstrained policy
(what a trainer recomputes). This is an option for the evaluation of un-warmed models; the default is free decoding,
see README ("Format warm-up vs constrained decoding") for the measurement behind that choice.
"""

from __future__ import annotations

import torch

OPENERS = ("<search>", "<answer>", "<think>")


def continuation_texts(tokenizer) -> list[str]:
    """Each token id's text as it reads *inside* a sequence: decoded behind an anchor token (``"a"``), whose text is
    then cut off. Decoding a token alone is not enough for a SentencePiece tokenizer (Llama, Mistral): its decoder
    strips the leading space of the first token, so ``'▁search'`` would read ``'search'`` and ``'<'`` + ``'▁search'``
    (text ``'< search'``) would pass as a prefix of ``<search>``."""
    anchor = tokenizer.convert_ids_to_tokens(list(tokenizer("a", add_special_tokens=False)["input_ids"]))
    head = tokenizer.convert_tokens_to_string(anchor)
    out = []
    for t in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))):
        s = tokenizer.convert_tokens_to_string(anchor + [t]) if t is not None else head
        out.append(s[len(head):] if s.startswith(head) else s)
    return out


class TurnStartConstraint:
    def __init__(self, tokenizer, openers: tuple[str, ...] = OPENERS) -> None:
        self.tok = tokenizer
        self.openers = openers
        self.vocab = continuation_texts(tokenizer)
        self._allowed: dict[str, torch.Tensor] = {}

    def _ok(self, text: str) -> bool:
        t = text.lstrip()
        return bool(t) and any(o.startswith(t) or t.startswith(o) for o in self.openers)

    def allowed(self, prefix: str) -> torch.Tensor | None:
        """Token ids allowed after the turn text ``prefix`` (None = unconstrained)."""
        p = prefix.lstrip()
        if any(p.startswith(o) for o in self.openers) or not (p == "" or any(o.startswith(p) for o in self.openers)):
            return None
        if p not in self._allowed:
            ids = [i for i, s in enumerate(self.vocab) if s.strip() and self._ok(p + s)]
            self._allowed[p] = torch.tensor(ids, dtype=torch.long)
        return self._allowed[p]

    def __call__(self, states, logits: torch.Tensor) -> torch.Tensor:
        for j, (_ep, turn) in enumerate(states):
            allowed = self.allowed(self.tok.decode(turn) if turn else "")
            if allowed is None or len(allowed) == 0:
                continue
            row = torch.full_like(logits[j], float("-inf"))
            row[allowed] = logits[j, allowed]
            logits[j] = row
        return logits
