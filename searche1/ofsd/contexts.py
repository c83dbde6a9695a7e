"""Privileged contexts for the OFSD teacher, and the aligned token sequences the teacher and the student score.

The **student** sees the plain inference prompt (``pair.student.prompt_ids``, exactly what it was sampled with). The
**teacher** (the frozen policy) sees the same user message — the protocol's instruction and the question, from
:func:`searche1.protocol.build_messages` — followed by a block of privileged information, rendered the same way
(the chat template's user turn + generation prompt when the tokenizer has one, else ``...\\nAssistant:``), so the
student trajectory's response tokens follow either prompt directly. Pass the ``chat`` and ``max_searches`` values the
rollouts used, so the two prompts differ only by the privileged block.

Contexts (registry :data:`CONTEXTS`; each ``fn(pair, tokenizer, *, chat=None, max_searches=4, show_information=True,
show_answer=True) -> str``, the teacher's prompt text). The wording is ours:

- ``sibling`` (default; the paper's, reconstructed): τ_ref's response shown as an expert's worked solution::

      <instruction>

      Question: <question>

      An expert who had the same search engine solved this question. Their worked solution is below; use it as a
      guide for your own response.
      --- expert solution ---
      <τ_ref's response text>
      --- end of expert solution ---

  ``show_information=False`` replaces the text of each ``<information>`` block with ``(retrieved passages hidden)``
  (the tags stay, so the search → information structure is still visible); ``show_answer=False`` removes every
  ``<answer> … </answer>`` span (an answer written in free text or inside ``<think>`` cannot be hidden). The response
  text is decoded from ``response_ids`` without special tokens (EOS would otherwise end the example early); without
  a tokenizer, ``response_text`` is used.
- ``answer``: the gold answer as hindsight: ``Hint, known in hindsight: the correct answer to this question is
  "X"`` (+ ``Other accepted forms: "Y", "Z".`` when there are aliases). ``show_*`` are ignored.
- ``hindsight`` (SD-Search style): every rollout of the group (``pair.group``, set by
  :func:`searche1.ofsd.pairs.mine_pairs`), in group order, as ``Attempt i (CORRECT|INCORRECT): "q1"; "q2"`` — only the
  search queries; passages, reasoning and answers (all later content) are hidden. The student's own rollout is one
  of the attempts. ``show_*`` are ignored.

:func:`teacher_sequence` returns the teacher's token ids (teacher prompt + the student's ``response_ids``), a mask
that is 1 exactly at the student's policy tokens, and ``offset = len(teacher prompt) − len(student prompt)``: the
token at student position ``p`` sits at teacher position ``p + offset``, so (after the usual shift: logits at
``p − 1`` predict token ``p``) ``teacher_logits[:, offset + P_s − 1 : offset + L_s − 1]`` aligns with
``student_logits[:, P_s − 1 : L_s − 1]`` for a student sequence of length ``L_s`` with a prompt of ``P_s`` tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

from searche1 import protocol
from searche1.errors import ConfigError
from searche1.ofsd.pairs import Pair, is_correct
from searche1.rollout.tokens import encode_prompts
from searche1.rollout.types import Episode

__all__ = [
    "CONTEXTS",
    "DEFAULT_CONTEXT",
    "ContextFn",
    "TeacherSequence",
    "answer_context",
    "get_context",
    "hindsight_context",
    "response_text",
    "sibling_context",
    "student_prompt_ids",
    "student_sequence",
    "teacher_prompt",
    "teacher_sequence",
]

ContextFn = Callable[..., str]

DEFAULT_CONTEXT = "sibling"

INFO_HIDDEN = "(retrieved passages hidden)"

_INFO_RE = re.compile(re.escape(protocol.INFO_OPEN) + r".*?(?:" + re.escape(protocol.INFO_CLOSE) + r"|\Z)", re.S)
_ANSWER_RE = re.compile(re.escape(protocol.ANSWER_OPEN) + r".*?(?:" + re.escape(protocol.ANSWER_CLOSE) + r"|\Z)",
                        re.S)


def _user_content(question: str, max_searches: int | None) -> str:
    return protocol.build_messages(question, max_searches=max_searches)[0]["content"]


def teacher_prompt(question: str, privileged: str, tokenizer: Any, *, chat: bool | None = None,
                   max_searches: int | None = 4) -> str:
    """The plain prompt's user message + ``\\n\\n`` + ``privileged``, rendered like the inference prompt."""
    content = _user_content(question, max_searches)
    if privileged.strip():
        content += "\n\n" + privileged.strip()
    return protocol.render_user_turn(content, tokenizer, chat)


def response_text(ep: Episode, tokenizer: Any = None) -> str:
    """An episode's response as text, without special tokens (decoded from ids when a tokenizer is given)."""
    if tokenizer is not None and ep.response_ids:
        return tokenizer.decode(list(ep.response_ids), skip_special_tokens=True)
    return ep.response_text


def _hide(text: str, *, show_information: bool, show_answer: bool) -> str:
    if not show_information:
        text = _INFO_RE.sub(protocol.INFO_OPEN + INFO_HIDDEN + protocol.INFO_CLOSE, text)
    if not show_answer:
        text = _ANSWER_RE.sub("", text)
    return text.strip()


def sibling_context(pair: Pair, tokenizer: Any, *, chat: bool | None = None, max_searches: int | None = 4,
                    show_information: bool = True, show_answer: bool = True) -> str:
    """Teacher prompt with τ_ref shown as an expert's worked solution (module docstring)."""
    ref = _hide(response_text(pair.reference, tokenizer), show_information=show_information, show_answer=show_answer)
    block = ("An expert who had the same search engine solved this question. Their worked solution is below; use it "
             "as a guide for your own response.\n"
             f"--- expert solution ---\n{ref}\n--- end of expert solution ---")
    return teacher_prompt(pair.question, block, tokenizer, chat=chat, max_searches=max_searches)


def answer_context(pair: Pair, tokenizer: Any, *, chat: bool | None = None, max_searches: int | None = 4,
                   show_information: bool = True, show_answer: bool = True) -> str:
    """Teacher prompt with the gold answer as a hindsight hint (``show_*`` ignored)."""
    answers = [a.strip() for a in pair.answers if a and a.strip()]
    if not answers and pair.reference.answer:
        answers = [pair.reference.answer.strip()]
    if not answers:
        raise ValueError(f"the 'answer' context needs a gold answer; pair for {pair.question!r} has none")
    block = f'Hint, known in hindsight: the correct answer to this question is "{answers[0]}".'
    if len(answers) > 1:
        block += " Other accepted forms: " + ", ".join(f'"{a}"' for a in answers[1:]) + "."
    return teacher_prompt(pair.question, block, tokenizer, chat=chat, max_searches=max_searches)


def _queries(ep: Episode) -> list[str]:
    return list(ep.queries) or protocol.search_queries(ep.response_text)


def hindsight_context(pair: Pair, tokenizer: Any, *, chat: bool | None = None, max_searches: int | None = 4,
                      show_information: bool = True, show_answer: bool = True) -> str:
    """Teacher prompt listing every group rollout's search queries labelled CORRECT/INCORRECT (``show_*`` ignored)."""
    if pair.group is None:
        raise ValueError("the 'hindsight' context needs pair.group (fix: mine pairs with searche1.ofsd.mine_pairs, "
                         "which sets it)")
    lines = ["Earlier attempts at this question and the searches they made (only the queries are shown; passages, "
             "reasoning and answers are hidden):"]
    for i, ep in enumerate(pair.group, start=1):
        label = "CORRECT" if is_correct(ep, pair.correct_threshold) else "INCORRECT"
        qs = _queries(ep)
        shown = "; ".join(f'"{q}"' for q in qs) if qs else "(no search)"
        lines.append(f"Attempt {i} ({label}): {shown}")
    lines.append("Learn from which search strategies led to a correct answer.")
    return teacher_prompt(pair.question, "\n".join(lines), tokenizer, chat=chat, max_searches=max_searches)


#: name -> ``fn(pair, tokenizer, *, chat, max_searches, show_information, show_answer) -> teacher prompt text``.
CONTEXTS: dict[str, ContextFn] = {"sibling": sibling_context, "answer": answer_context, "hindsight": hindsight_context}


def get_context(name: str = DEFAULT_CONTEXT) -> ContextFn:
    """The privileged context registered as ``name``; an unknown name fails listing the valid ones."""
    try:
        return CONTEXTS[name]
    except KeyError:
        valid = ", ".join(sorted(CONTEXTS))
        raise ConfigError(f"unknown privileged context '{name}' (fix: use one of: {valid})") from None


# ------------------------------------------------------------------------------------------------------ sequences


class TeacherSequence(NamedTuple):
    ids: list[int]  # teacher prompt ids + the student's response ids
    mask: list[int]  # 1 exactly at the student's policy tokens
    offset: int  # teacher position = student position + offset


def student_prompt_ids(pair: Pair) -> list[int]:
    """The student's prompt: always the plain inference prompt the student trajectory was sampled with."""
    return list(pair.student.prompt_ids)


def student_sequence(pair: Pair) -> tuple[list[int], list[int]]:
    """Student prompt + response ids and the mask (1 at the student's policy tokens)."""
    s = pair.student
    return list(s.prompt_ids) + list(s.response_ids), [0] * len(s.prompt_ids) + [int(m != 0) for m in s.policy_mask]


def teacher_sequence(pair: Pair, tokenizer: Any, context: str | ContextFn = DEFAULT_CONTEXT, *,
                     chat: bool | None = None, max_searches: int | None = 4, show_information: bool = True,
                     show_answer: bool = True) -> TeacherSequence:
    """Teacher prompt (``context`` rendered, tokenised like the student's prompt: ``add_special_tokens=False`` plus
    the tokenizer's BOS when it adds one, :func:`searche1.rollout.tokens.encode_prompts`) + the student's response."""
    fn = get_context(context) if isinstance(context, str) else context
    text = fn(pair, tokenizer, chat=chat, max_searches=max_searches, show_information=show_information,
              show_answer=show_answer)
    prompt = encode_prompts(tokenizer, [text])[0]
    s = pair.student
    if len(s.policy_mask) != len(s.response_ids):
        raise ValueError(f"student episode has {len(s.response_ids)} response ids but {len(s.policy_mask)} mask "
                         "entries")
    ids = prompt + list(s.response_ids)
    mask = [0] * len(prompt) + [int(m != 0) for m in s.policy_mask]
    return TeacherSequence(ids, mask, len(prompt) - len(s.prompt_ids))
