"""Hand-checked cases for SQuAD normalisation, EM, F1 and the reward registry."""

import pytest

from searche1.errors import ConfigError
from searche1.rewards import (
    DEFAULT_REWARD,
    REWARDS,
    answer_reward,
    exact_match,
    f1_reward,
    f1_score,
    get_reward,
    normalize_answer,
)


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  An   apple,  a day ", "apple day"),
        ("theatre", "theatre"),  # articles only as whole words
        ("U.S.A.", "usa"),
        ("the", ""),
        ("", ""),
        ("Tab\tand\nnewline", "tab and newline"),
    ],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match_cases():
    assert exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert exact_match("a cat", ["the cat"]) == 1.0
    assert exact_match("Paris, France", ["paris france"]) == 1.0
    assert exact_match("Paris", ["London", "paris"]) == 1.0  # any gold counts
    assert exact_match("Paris", ["London", "Rome"]) == 0.0
    assert exact_match("Paris", "paris") == 1.0  # a single gold string is accepted
    assert exact_match("Paris", []) == 0.0
    assert exact_match(None, ["paris"]) == 0.0
    assert exact_match("", ["paris"]) == 0.0
    assert exact_match("new york city", ["new york"]) == 0.0


def test_f1_partial_overlap_exact_value():
    # P = 2/3, R = 1 -> F1 = 2 * (2/3) / (5/3) = 0.8
    assert f1_score("new york city", ["new york"]) == pytest.approx(0.8)
    # P = 1, R = 1/2 -> F1 = 2/3
    assert f1_score("york", ["New York"]) == pytest.approx(2 / 3)


def test_f1_max_over_golds_and_edge_cases():
    assert f1_score("new york city", ["boston", "new york", "new york city"]) == 1.0
    assert f1_score("new york city", ["boston", "new york"]) == pytest.approx(0.8)
    assert f1_score("boston", ["new york"]) == 0.0
    assert f1_score("", ["new york"]) == 0.0
    assert f1_score(None, ["new york"]) == 0.0
    assert f1_score("the", ["a"]) == 1.0  # both normalise to empty
    assert f1_score("x", []) == 0.0
    # repeated tokens are counted with multiplicity: pred 'x y y' vs gold 'y' -> P = 1/3, R = 1, F1 = 0.5
    assert f1_score("x y y", ["y"]) == pytest.approx(0.5)


def test_answer_reward_is_em_with_metrics():
    r, m = answer_reward("The Eiffel Tower!", ["eiffel tower"])
    assert r == 1.0
    assert m == {"reward/em": 1.0, "reward/f1": 1.0, "reward/has_answer": 1.0}

    r, m = answer_reward("new york city", ["new york"])
    assert r == 0.0
    assert m["reward/f1"] == pytest.approx(0.8)
    assert m["reward/has_answer"] == 1.0


def test_answer_reward_none_and_empty_pred():
    r, m = answer_reward(None, ["paris"])
    assert r == 0.0
    assert m == {"reward/em": 0.0, "reward/f1": 0.0, "reward/has_answer": 0.0}
    r, m = answer_reward("", ["paris"])
    assert r == 0.0
    assert m["reward/has_answer"] == 0.0


def test_registry():
    assert DEFAULT_REWARD == "em"
    assert get_reward() is answer_reward
    assert get_reward("em") is answer_reward
    assert get_reward("f1") is f1_reward
    r, m = get_reward("f1")("new york city", ["new york"])
    assert r == pytest.approx(0.8) and m["reward/em"] == 0.0
    with pytest.raises(ConfigError) as exc:
        get_reward("bleu")
    for name in REWARDS:
        assert name in str(exc.value)
    assert isinstance(exc.value, ValueError)
