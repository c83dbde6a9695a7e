"""searche1.ofsd: pair mining on hand-made groups, privileged contexts and the aligned teacher/student sequences."""

from __future__ import annotations

import pytest
from tiny import tiny_tokenizer

from searche1 import protocol
from searche1.errors import ConfigError
from searche1.ofsd import (
    CONTEXTS,
    Pair,
    get_context,
    mine_pairs,
    student_prompt_ids,
    student_sequence,
    teacher_prompt,
    teacher_sequence,
    token_set_distance,
)
from searche1.ofsd.contexts import INFO_HIDDEN
from searche1.rollout.types import Episode

Q = "What is the capital of France?"


def ep(reward: float, searches: int = 1, tokens: list[int] | None = None, *, question: str = Q,
       info: list[int] | None = None) -> Episode:
    """A hand-made episode: ``tokens`` are its policy tokens; ``info`` (inserted, mask 0) goes after the first one."""
    tokens = list(tokens if tokens is not None else [10, 11, 12])
    info = list(info or [])
    resp = tokens[:1] + info + tokens[1:]
    mask = [1] * min(1, len(tokens)) + [0] * len(info) + [1] * max(0, len(tokens) - 1)
    return Episode(example_id="x", question=question, answers=["Paris"], prompt_ids=[1, 2, 3], response_ids=resp,
                   policy_mask=mask, logprobs=[0.0] * len(resp), queries=[f"q{i}" for i in range(searches)],
                   reward=reward)


# ------------------------------------------------------------------------------------------------ mining


def test_all_wrong_gives_no_pair():
    pairs, stats = mine_pairs([[ep(0.0), ep(0.0), ep(0.5)]])
    assert pairs == []
    assert stats["ofsd/skipped_no_correct"] == 1.0 and stats["ofsd/pairs"] == 0.0 and stats["ofsd/groups"] == 1.0


def test_empty_group_counts_as_no_correct():
    pairs, stats = mine_pairs([[]])
    assert pairs == [] and stats["ofsd/skipped_no_correct"] == 1.0


def test_single_rollout_gives_no_student():
    pairs, stats = mine_pairs([[ep(1.0)]])
    assert pairs == [] and stats["ofsd/skipped_no_student"] == 1.0 and stats["ofsd/skipped_no_correct"] == 0.0


def test_all_right_reference_fewest_searches_student_most_different_correct():
    g = [
        ep(1.0, 3, [10, 11, 12]),
        ep(1.0, 1, [10, 11, 13]),  # fewest searches -> reference
        ep(1.0, 2, [10, 11, 14]),  # distance 1 - 2/4 = 0.5
        ep(1.0, 2, [20, 21, 22]),  # disjoint from the reference: distance 1 -> student
    ]
    pairs, stats = mine_pairs([g])
    assert len(pairs) == 1
    p = pairs[0]
    assert p.reference is g[1] and p.reference_index == 1
    assert p.student is g[3] and p.student_index == 3
    assert p.student_correct and stats["ofsd/student_correct_frac"] == 1.0
    assert p.group is not None and len(p.group) == 4 and p.question == Q and p.answers == ["Paris"]
    assert stats["ofsd/ref_searches"] == 1.0 and stats["ofsd/student_searches"] == 2.0


def test_incorrect_students_preferred_over_more_different_correct_ones():
    g = [ep(1.0, 1, [1, 2, 3]), ep(1.0, 2, [7, 8, 9]), ep(0.0, 2, [1, 2, 4]), ep(0.0, 3, [1, 5, 6])]
    (p,), _ = mine_pairs([g])
    assert p.reference is g[0]
    # g[1] is the most different (distance 1) but correct; among the incorrect ones g[3] (1 - 1/5) beats g[2] (0.5)
    assert p.student is g[3] and not p.student_correct


def test_reference_ties_by_tokens_then_index():
    g = [ep(0.0), ep(1.0, 1, [1, 2, 3, 4]), ep(1.0, 1, [1, 2]), ep(1.0, 1, [3, 4])]
    (p,), _ = mine_pairs([g])
    assert p.reference_index == 2  # same searches as 1 and 3; fewer tokens than 1; lower index than 3
    # the same for 'shortest': fewest policy tokens, ties -> lowest index (searches ignored)
    g2 = [ep(1.0, 0, [1, 2, 3]), ep(1.0, 4, [5, 6]), ep(1.0, 1, [7, 8]), ep(0.0)]
    (p2,), _ = mine_pairs([g2], reference="shortest")
    assert p2.reference_index == 1
    (p3,), _ = mine_pairs([g2])
    assert p3.reference_index == 0  # fewest searches


def test_inserted_tokens_do_not_count():
    # the inserted <information> tokens neither count as generated tokens nor enter the distance
    a = ep(1.0, 1, [1, 2], info=[50, 51, 52, 53])
    b = ep(1.0, 1, [1, 2, 3])
    assert a.num_policy_tokens == 2
    (p,), _ = mine_pairs([[b, a]])
    assert p.reference is a
    assert token_set_distance(a, b) == pytest.approx(1 - 2 / 3)
    assert token_set_distance(ep(0.0, 0, []), ep(0.0, 0, [])) == 0.0


def test_student_ties_by_lowest_index():
    g = [ep(1.0, 1, [1, 2]), ep(0.0, 1, [5, 6]), ep(0.0, 1, [7, 8])]
    (p,), _ = mine_pairs([g])
    assert p.student_index == 1


def test_all_others_and_stats_over_groups():
    g1 = [ep(0.0), ep(1.0, 2), ep(1.0, 1), ep(0.0)]
    g2 = [ep(0.0), ep(0.0)]
    g3 = [ep(1.0)]
    pairs, stats = mine_pairs([g1, g2, g3], student="all_others")
    assert [(p.group_index, p.reference_index, p.student_index) for p in pairs] == [(0, 2, 0), (0, 2, 1), (0, 2, 3)]
    assert stats == pytest.approx({"ofsd/groups": 3.0, "ofsd/pairs": 3.0, "ofsd/skipped_no_correct": 1.0,
                                   "ofsd/skipped_no_student": 1.0, "ofsd/student_correct_frac": 1 / 3,
                                   "ofsd/ref_searches": 1.0, "ofsd/student_searches": 4 / 3})


def test_custom_distance_and_threshold():
    g = [ep(1.0, 1, [1]), ep(0.0, 5, [1]), ep(0.0, 2, [1])]
    (p,), _ = mine_pairs([g], distance=lambda r, c: abs(c.searches - r.searches))
    assert p.student_index == 1
    # with threshold 0.5 a reward of 0.6 counts as correct
    g2 = [ep(0.6, 1), ep(0.0, 2)]
    assert mine_pairs([g2])[0] == []
    (p2,), _ = mine_pairs([g2], correct_threshold=0.5)
    assert p2.reference_index == 0 and p2.correct_threshold == 0.5


def test_bad_options_and_mixed_groups():
    with pytest.raises(ConfigError, match="all_others, most_different|most_different, all_others"):
        mine_pairs([[ep(1.0)]], student="random")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        mine_pairs([[ep(1.0)]], reference="longest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="different questions"):
        mine_pairs([[ep(1.0), ep(0.0, question="Other?")]])


# ------------------------------------------------------------------------------------------------ contexts


def enc(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def real_ep(tok, reward: float, query: str, passage: str, answer: str) -> Episode:
    """An episode with real token ids: policy search, inserted information, policy answer, EOS."""
    prompt = enc(tok, protocol.build_prompt(Q, tok))
    pieces = [
        (f"<search> {query} </search>", 1),
        (f"\n\n<information>Doc 1 (Title: T) {passage}</information>\n\n", 0),
        (f"<think> it says {answer} </think><answer> {answer} </answer>", 1),
    ]
    e = Episode(example_id="x", question=Q, answers=["Paris", "Paris, France"], prompt_ids=prompt, reward=reward)
    for text, pol in pieces:
        e.append(enc(tok, text), bool(pol))
    e.append([tok.eos_token_id], True)
    e.queries = [query]
    e.answer = answer
    e.response_text = tok.decode(e.response_ids, skip_special_tokens=False)
    return e


@pytest.fixture(scope="module")
def pair():
    tok = tiny_tokenizer()
    g = [
        real_ep(tok, 0.0, "largest city of Germany", "Berlin is the capital of Germany.", "Berlin"),
        real_ep(tok, 1.0, "capital of France", "Paris is the capital of France.", "Paris"),
        real_ep(tok, 0.0, "river Seine", "The Seine flows through the city.", "Lyon"),
    ]
    (p,), _ = mine_pairs([g])
    assert p.reference is g[1]
    return p


def test_student_prompt_is_plain_inference_prompt(pair):
    tok = tiny_tokenizer()
    assert student_prompt_ids(pair) == pair.student.prompt_ids == enc(tok, protocol.build_prompt(Q, tok))
    ids, mask = student_sequence(pair)
    assert ids[len(pair.student.prompt_ids):] == pair.student.response_ids
    assert mask == [0] * len(pair.student.prompt_ids) + pair.student.policy_mask


def test_teacher_prompt_extends_the_inference_prompt():
    tok = tiny_tokenizer()
    for chat in (None, False):
        assert teacher_prompt(Q, "", tok, chat=chat) == protocol.build_prompt(Q, tok, chat=chat)
        text = teacher_prompt(Q, "PRIVILEGED", tok, chat=chat)
        user = protocol.build_messages(Q)[0]["content"]
        assert user + "\n\nPRIVILEGED" in text
        assert text.endswith("<|im_start|>assistant\n" if chat is None else "\nAssistant:")


def test_sibling_context(pair):
    tok = tiny_tokenizer()
    fn = get_context()
    full = fn(pair, tok)
    assert protocol.instruction(4) in full and f"Question: {Q}" in full
    assert "expert" in full and "<search> capital of France </search>" in full
    assert "Paris is the capital of France." in full and "<answer> Paris </answer>" in full
    assert "Lyon" not in full and "Berlin" not in full  # only the reference is shown
    assert full.count(tok.eos_token) == 1  # the reference's EOS is not copied (only the chat turn's own)
    no_info = fn(pair, tok, show_information=False)
    assert "Paris is the capital of France." not in no_info and f"<information>{INFO_HIDDEN}</information>" in no_info
    assert "<answer> Paris </answer>" in no_info
    no_ans = fn(pair, tok, show_answer=False)
    assert "<answer>" not in no_ans.split("Question:")[1] and "Paris is the capital of France." in no_ans
    assert "<search> capital of France </search>" in no_ans
    plain = fn(pair, tok, chat=False, max_searches=2)
    assert protocol.instruction(2) in plain and plain.endswith("\nAssistant:")


def test_answer_context(pair):
    text = get_context("answer")(pair, tiny_tokenizer())
    assert 'the correct answer to this question is "Paris"' in text and '"Paris, France"' in text
    assert "capital of France </search>" not in text


def test_hindsight_context(pair):
    text = get_context("hindsight")(pair, tiny_tokenizer())
    assert 'Attempt 1 (INCORRECT): "largest city of Germany"' in text
    assert 'Attempt 2 (CORRECT): "capital of France"' in text
    assert 'Attempt 3 (INCORRECT): "river Seine"' in text
    block = text.split(f"Question: {Q}")[1]
    for hidden in ("Paris is the capital", "Berlin is the capital", "<answer>", "<information>", "Lyon", "it says"):
        assert hidden not in block
    no_group = Pair(pair.question, pair.answers, pair.reference, pair.student, 0)
    with pytest.raises(ValueError, match="pair.group"):
        get_context("hindsight")(no_group, tiny_tokenizer())
    g = [ep(0.0, 0, [5]), ep(1.0, 1)]
    (p,), _ = mine_pairs([g])
    assert "Attempt 1 (INCORRECT): (no search)" in get_context("hindsight")(p, tiny_tokenizer())


def test_context_registry():
    assert set(CONTEXTS) == {"sibling", "answer", "hindsight"}
    with pytest.raises(ConfigError, match="answer, hindsight, sibling"):
        get_context("oracle")


@pytest.mark.parametrize("context", ["sibling", "answer", "hindsight"])
def test_teacher_sequence_aligns_with_student(pair, context):
    tok = tiny_tokenizer()
    seq = teacher_sequence(pair, tok, context, show_information=False)
    s_ids, s_mask = student_sequence(pair)
    P = len(pair.student.prompt_ids)
    assert len(seq.ids) == len(seq.mask) == len(s_ids) + seq.offset
    assert seq.ids[: P + seq.offset] == enc(tok, get_context(context)(pair, tok, show_information=False))
    assert seq.offset > 0  # the teacher prompt is the student prompt plus a block
    for p in range(len(s_ids)):  # student position p <-> teacher position p + offset
        assert seq.mask[p + seq.offset] == s_mask[p]
        if p >= P:
            assert seq.ids[p + seq.offset] == s_ids[p]
    assert sum(seq.mask) == pair.student.num_policy_tokens and sum(seq.mask[: P + seq.offset]) == 0
    # the inserted <information> tokens of the student stay masked in the teacher sequence
    info = [i for i, m in enumerate(pair.student.policy_mask) if m == 0]
    assert info and all(seq.mask[P + seq.offset + i] == 0 for i in info)
    # a callable context is accepted
    seq2 = teacher_sequence(pair, tok, lambda p, t, **kw: teacher_prompt(p.question, "X", t))
    assert seq2.ids[-len(pair.student.response_ids):] == pair.student.response_ids
