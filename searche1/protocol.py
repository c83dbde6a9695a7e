"""The agent's text format: the prompt, tag parsing, answer extraction and how retrieved passages are shown.

This is the only module that knows the tags. The convention is Search-R1's: the policy writes free text;
``<search> query </search>`` asks the environment for the top-k passages, which come back appended as
``<information> ... </information>``; ``<answer> ... </answer>`` ends the episode; ``<think> ... </think>`` is allowed,
not required. A turn ends at ``</search>``, ``</answer>`` or EOS (:data:`TURN_STOP_STRINGS`).

Parsing rules (one scanner, :func:`_scan`, serves every function here):

* Tags are exact, lowercase, without spaces inside the brackets (``<search>``, not ``< search >`` or ``<Search>``).
* ``<think>`` and ``<information>`` open a *block* that runs to the first matching closing tag (or to the end of the
  text when unclosed). Every tag inside a block is ignored: the model is never credited for actions it merely thought
  about or copied from retrieved text, and an unclosed block hides the rest of the text.
* An *action* (``search`` / ``answer``) is an opening tag followed by its closing tag with **no other protocol tag in
  between**. So for nested openers the last-opened one wins (``<search> a <search> b </search>`` is the search ``b``),
  and ``<search> a <answer> b </answer>`` is the answer ``b`` (the interrupted search opener is a stray tag).
* Tags that are not part of a block or an action are *stray*: ignored when parsing a turn, invalid in
  :func:`is_valid_format`.

How this departs from Search-R1:

* :func:`extract_answer` takes the answer from the model's *response* only, outside ``<think>`` and
  ``<information>`` blocks. Search-R1 scans prompt + response and needs the prompt to hold exactly one example
  ``<answer>`` tag to skip it; our instruction holds no example answer and the caller never passes the prompt.
* The instruction is our own wording and states the search limit.
* Retrieved passages are numbered ``Doc 1 (Title: ...) text`` (one per line, whitespace collapsed), each truncated to
  ``max_doc_tokens`` tokens, and protocol tags inside retrieved text are removed, so a document can neither blow the
  context nor close the information block early.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from searche1.retrieval.base import Hit

__all__ = [
    "ANSWER_CLOSE",
    "ANSWER_OPEN",
    "INFO_CLOSE",
    "INFO_OPEN",
    "NO_RESULTS",
    "SEARCH_CLOSE",
    "SEARCH_OPEN",
    "THINK_CLOSE",
    "THINK_OPEN",
    "TURN_STOP_STRINGS",
    "TurnAction",
    "build_baseline_prompt",
    "build_messages",
    "build_prompt",
    "count_searches",
    "extract_answer",
    "format_information",
    "format_information_batch",
    "instruction",
    "is_valid_format",
    "lenient_answer",
    "parse_turn",
    "render_user_turn",
    "search_queries",
]

SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
INFO_OPEN, INFO_CLOSE = "<information>", "</information>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

TURN_STOP_STRINGS: tuple[str, ...] = (SEARCH_CLOSE, ANSWER_CLOSE)
"""A generation turn stops right after one of these (or at EOS)."""

NO_RESULTS = "No results found."

_TAG_RE = re.compile(r"<(/?)(search|answer|information|think)>")
_AFTER_ANSWER = re.compile(r"[^\s<]{0,8}<?\s*")  # what may follow </answer>: the rest of its token, whitespace
_BLOCKS = ("think", "information")
_ACTIONS = ("search", "answer")

# --------------------------------------------------------------------------------------------------------- prompt

_INSTRUCTION = (
    "Answer the question below. You have a search engine you can use to look up facts.\n"
    "- If it helps, reason first inside <think></think>.\n"
    "- To search, put your query inside <search></search>. The top results will be returned to you "
    "inside <information></information>.\n"
    "{limit}"
    "- When you are sure, put only the final answer, a short phrase with no explanation, inside <answer></answer>."
)
# The instruction names every tag but holds no complete non-empty action, so even code that scans prompt + response
# (as Search-R1 does) finds no answer or query in it.


def instruction(max_searches: int | None = 4) -> str:
    """The task instruction (our own wording). ``max_searches=None`` leaves the limit out."""
    if max_searches is None:
        limit = "- You can search as many times as you need.\n"
    elif max_searches <= 0:
        limit = "- Searching is not available for this question; answer directly.\n"
    else:
        limit = (
            "- You can search at most once.\n"
            if max_searches == 1
            else f"- You can search as many times as you need, up to {max_searches} times.\n"
        )
    return _INSTRUCTION.format(limit=limit)


def _user_content(question: str, max_searches: int | None) -> str:
    return f"{instruction(max_searches)}\n\nQuestion: {question.strip()}"


def build_messages(question: str, *, max_searches: int | None = 4) -> list[dict[str, str]]:
    """The chat messages of the inference prompt: one user turn holding the instruction and the question."""
    return [{"role": "user", "content": _user_content(question, max_searches)}]


def render_user_turn(content: str, tokenizer: Any, chat: bool | None) -> str:
    """One user turn as prompt text: the chat template when available (and ``chat`` is not False), else plain."""
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if chat is True and template is None:
        raise ValueError(
            "build_prompt(chat=True) needs a tokenizer with a chat_template "
            "(fix: pass an instruct model's tokenizer, or chat=None/False for the plain prompt)"
        )
    if template is not None and chat is not False:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    return content + "\nAssistant:"


def build_prompt(question: str, tokenizer: Any = None, *, chat: bool | None = None, max_searches: int | None = 4) -> str:
    """The inference prompt as text.

    With ``chat=None`` (auto) the tokenizer's chat template is used when it has one; ``chat=False`` forces the plain
    ``instruction\\n\\nQuestion: ...\\nAssistant:`` form (base models); ``chat=True`` requires a chat template.
    """
    return render_user_turn(_user_content(question, max_searches), tokenizer, chat)


_BASELINE_INSTRUCTION = (
    "Answer the question below{source}. Put only the final answer, a short phrase with no explanation, "
    "inside <answer></answer>."
)


def build_baseline_prompt(
    question: str, tokenizer: Any = None, *, passages: str | None = None, chat: bool | None = None
) -> str:
    """Prompt of the paper's non-agent baselines: ``direct`` (``passages=None``) and ``naive-rag`` (the question's
    own top-k passages, formatted by :func:`format_information`, placed before the question)."""
    if passages is None:
        content = _BASELINE_INSTRUCTION.format(source="") + f"\n\nQuestion: {question.strip()}"
    else:
        content = (_BASELINE_INSTRUCTION.format(source=" using the retrieved passages")
                   + f"\n\n{passages.strip()}\n\nQuestion: {question.strip()}")
    return render_user_turn(content, tokenizer, chat)


def lenient_answer(response: str) -> str | None:
    """Answer of a baseline response: the tagged answer if any, else the first non-empty line with tags removed.

    Used for ``direct`` / ``naive-rag`` only, where the format is not what is being measured; agent episodes are
    scored strictly with :func:`extract_answer`.
    """
    tagged = extract_answer(response)
    if tagged is not None:
        return tagged
    for line in _TAG_RE.sub(" ", response).splitlines():
        line = line.strip()
        if line:
            return line
    return None


# -------------------------------------------------------------------------------------------------------- scanner


@dataclass(frozen=True, slots=True)
class _Elem:
    """A top-level piece of a text: a block (think/information), an action (search/answer) or a stray tag."""

    kind: str  # 'think' | 'information' | 'search' | 'answer' | 'stray'
    content: str  # raw text between the tags (the tag itself for 'stray')
    start: int  # offset of the opening tag
    end: int  # offset just past the closing tag (len(text) for an unclosed block)
    closed: bool = True  # False only for an unclosed block or a stray opener


def _scan(text: str) -> list[_Elem]:
    """Split ``text`` into top-level elements, in order, following the rules in the module docstring."""
    tags = list(_TAG_RE.finditer(text))
    elems: list[_Elem] = []
    pending: re.Match[str] | None = None  # an action opener waiting for its closer

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            elems.append(_Elem("stray", pending.group(0), pending.start(), pending.end(), closed=False))
            pending = None

    i, n = 0, len(tags)
    while i < n:
        m = tags[i]
        closing, name = m.group(1) == "/", m.group(2)
        if name in _BLOCKS:
            flush()
            if closing:
                elems.append(_Elem("stray", m.group(0), m.start(), m.end()))
                i += 1
                continue
            j = next((k for k in range(i + 1, n) if tags[k].group(2) == name and tags[k].group(1)), None)
            if j is None:
                elems.append(_Elem(name, text[m.end() :], m.start(), len(text), closed=False))
                return elems
            elems.append(_Elem(name, text[m.end() : tags[j].start()], m.start(), tags[j].end()))
            i = j + 1
            continue
        if not closing:
            flush()
            pending = m
        elif pending is not None and pending.group(2) == name:
            elems.append(_Elem(name, text[pending.end() : m.start()], pending.start(), m.end()))
            pending = None
        else:
            flush()
            elems.append(_Elem("stray", m.group(0), m.start(), m.end()))
        i += 1
    flush()
    return elems


# -------------------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class TurnAction:
    """What one generated turn asks for. ``end`` (not compared) is the offset just past the action's closing tag."""

    kind: Literal["search", "answer", "none"]
    content: str = ""
    end: int | None = field(default=None, compare=False)


def parse_turn(text: str) -> TurnAction:
    """The action of one generated turn: its first complete search/answer outside think/information blocks.

    Returns ``TurnAction('none', '')`` when there is no complete action (no tag, unclosed tag) or when the first
    complete action is empty (``<search> </search>``): the environment cannot act on it.
    """
    for e in _scan(text):
        if e.kind in _ACTIONS:
            content = e.content.strip()
            if not content:
                return TurnAction("none", "")
            return TurnAction(e.kind, content, end=e.end)  # type: ignore[arg-type]
    return TurnAction("none", "")


def extract_answer(response: str) -> str | None:
    """The final answer of a response (never pass the prompt): the last complete ``<answer>`` outside blocks.

    ``None`` when there is no complete answer or the last one is empty.
    """
    answers = [e for e in _scan(response) if e.kind == "answer"]
    if not answers:
        return None
    return answers[-1].content.strip() or None


def search_queries(response: str) -> list[str]:
    """The non-empty queries of the complete searches outside think/information blocks, in order."""
    return [q for e in _scan(response) if e.kind == "search" and (q := e.content.strip())]


def count_searches(response: str) -> int:
    """Number of complete, non-empty ``<search>`` actions outside think/information blocks."""
    return len(search_queries(response))


def is_valid_format(response: str, *, max_searches: int | None = None) -> bool:
    """Whether ``response`` is a well-formed, finished episode.

    The rule: ignoring free text and closed ``<think>`` blocks (allowed anywhere before the answer), the top-level
    elements are ``(search information)* answer``: every search is non-empty and directly followed by an information
    block, there is exactly one answer, it is non-empty and nothing but whitespace follows it, or the rest of the
    token that closed it (up to 8 characters, no space or tag, right after ``</answer>``, e.g. SmolLM2's ``>.``: the
    engines stop on the whole token that completes a stop string). Any stray tag (an
    unclosed or unopened search/answer/think/information tag) or unclosed block makes it invalid, so an episode cut
    off mid-turn or right after a search is invalid. ``max_searches`` optionally caps the number of searches.
    """
    seq: list[_Elem] = []
    for e in _scan(response):
        if e.kind == "stray" or not e.closed:
            return False
        if e.kind == "think":
            continue
        if e.kind in _ACTIONS and not e.content.strip():
            return False
        seq.append(e)
    if not seq or seq[-1].kind != "answer" or not _AFTER_ANSWER.fullmatch(response[seq[-1].end :]):
        return False
    body = seq[:-1]
    if len(body) % 2:
        return False
    if any(s.kind != "search" or info.kind != "information" for s, info in zip(body[0::2], body[1::2])):
        return False
    return max_searches is None or len(body) // 2 <= max_searches


# ---------------------------------------------------------------------------------------------------- information


def _truncate_all(texts: list[str], max_tokens: int | None, tokenizer: Any) -> list[str]:
    """Each text cut to ``max_tokens`` tokens (encoded without special tokens, cut, decoded), or words without a
    tokenizer. Each distinct text is cut once (a turn's searches often return the same passages: a GRPO group's
    episodes ask the same query). A callable (HF) tokenizer encodes them all in one call: a fast tokenizer spreads
    them over the CPU's cores, ~2x faster per text than one call each on 2 cores."""
    if max_tokens is None or max_tokens <= 0:
        return list(texts)
    if tokenizer is None:
        return [" ".join(t.split()[:max_tokens]) for t in texts]
    if not texts:
        return []
    distinct = list(dict.fromkeys(texts))
    if callable(tokenizer):
        encoded = tokenizer(distinct, add_special_tokens=False)["input_ids"]
    else:
        encoded = [tokenizer.encode(t, add_special_tokens=False) for t in distinct]
    cut = {t: t if len(ids) <= max_tokens else tokenizer.decode(list(ids[:max_tokens]), skip_special_tokens=True)
           for t, ids in zip(distinct, encoded)}
    return [cut[t] for t in texts]


def _clean(text: str, specials: re.Pattern | None = None) -> str:
    """Remove protocol tags (and ``specials``: the tokenizer's special-token strings) and collapse whitespace, so
    retrieved text cannot alter the episode's structure."""
    if specials is not None:
        text = specials.sub(" ", text)
    return " ".join(_TAG_RE.sub(" ", text).split())


def _special_tokens_re(tokenizer: Any) -> re.Pattern | None:
    """The tokenizer's special-token strings (``<|im_end|>``, ...) as one pattern: a fast tokenizer encodes them
    as control ids even with ``add_special_tokens=False``, so a passage holding one could end the episode or fake a
    turn."""
    found = set(getattr(tokenizer, "all_special_tokens", None) or [])
    found |= {getattr(t, "content", "") for t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values()
              if getattr(t, "special", False)}
    return _alternation(tuple(sorted((t for t in found if t), key=lambda t: (-len(t), t))))


@functools.lru_cache(maxsize=8)
def _alternation(strings: tuple[str, ...]) -> re.Pattern | None:
    return re.compile("|".join(map(re.escape, strings))) if strings else None


def format_information(hits: Sequence[Hit], tokenizer: Any = None, max_doc_tokens: int | None = 128) -> str:
    """The block appended after a search: ``\\n\\n<information>Doc 1 (Title: T) text\\nDoc 2 ...</information>\\n\\n``.

    Each document's text is truncated to ``max_doc_tokens`` tokens of ``tokenizer`` (encoded without special tokens,
    cut, decoded) or, without a tokenizer, to that many whitespace-separated words; ``None`` or ``<= 0`` keeps it
    whole. No hits gives an information block that says so.
    """
    return format_information_batch([hits], tokenizer, max_doc_tokens)[0]


def format_information_batch(hit_lists: Sequence[Sequence[Hit]], tokenizer: Any = None,
                             max_doc_tokens: int | None = 128) -> list[str]:
    """:func:`format_information` of each hit list, with every document of every list truncated in one batch."""
    specials = _special_tokens_re(tokenizer) if tokenizer is not None else None
    cut = iter(_truncate_all([_clean(h.text, specials) for hits in hit_lists for h in hits], max_doc_tokens,
                             tokenizer))
    blocks = []
    for hits in hit_lists:
        lines = []
        for i, hit in enumerate(hits, start=1):
            title = _clean(hit.title, specials)
            text = _clean(next(cut))
            head = f"Doc {i} (Title: {title})" if title else f"Doc {i}"
            lines.append(f"{head} {text}" if text else head)
        body = "\n".join(lines) if lines else NO_RESULTS
        blocks.append(f"\n\n{INFO_OPEN}{body}{INFO_CLOSE}\n\n")
    return blocks
