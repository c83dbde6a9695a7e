"""Pair mining for the OFSD phase: from each group of K rollouts of one question, a reference and student trajectories.

Rules (DESIGN §1.3, reconstructed; every choice is a parameter):

- A rollout is **correct** when ``reward >= correct_threshold`` (default 1.0: the exact-match reward).
- The **reference** τ_ref is a correct rollout chosen by ``reference``:
  ``fewest_searches`` (default): fewest searches (``len(episode.queries)``), ties → fewest generated policy tokens
  (``sum(policy_mask)``), ties → lowest index in the group; ``shortest``: fewest policy tokens, ties → lowest index.
  No correct rollout → no pair (counted as ``no_correct``).
- The **student** trajectory is chosen by ``student``:
  ``most_different`` (default): among the incorrect rollouts if there are any, else among the other correct ones,
  the one at the largest ``distance`` from τ_ref (ties → lowest index); ``all_others``: every rollout but τ_ref, one
  pair each, in group order. A group with no rollout besides τ_ref gives no pair (``no_student``).
- The default **distance** is ``1 − |A ∩ B| / |A ∪ B|`` (Jaccard distance) between the *sets* of token ids the two
  rollouts generated (``policy_mask`` 1; retrieved ``<information>`` tokens and the prompt are left out, so two
  rollouts are not made similar by retrieving the same passages). Order and counts are ignored: it is a cheap
  proxy for "took a different path". Two empty sets are at distance 0. Any ``fn(reference, candidate) -> float``
  (larger = more different) can replace it.

Departure from the paper: its exact tie-breaking and distance are not public; these are our documented choices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from searche1.errors import ConfigError
from searche1.rollout.types import Episode

__all__ = [
    "REFERENCE_RULES",
    "STUDENT_RULES",
    "Distance",
    "Pair",
    "is_correct",
    "mine_pairs",
    "pick_reference",
    "token_set_distance",
]

Distance = Callable[[Episode, Episode], float]

REFERENCE_RULES = ("fewest_searches", "shortest")
STUDENT_RULES = ("most_different", "all_others")


@dataclass
class Pair:
    """One distillation pair: the student trajectory τ_stu is scored by the teacher shown τ_ref."""

    question: str
    answers: list[str]
    reference: Episode
    student: Episode
    group_index: int  # index of the group in the list given to :func:`mine_pairs`
    reference_index: int = -1  # index of τ_ref inside its group
    student_index: int = -1  # index of τ_stu inside its group
    group: list[Episode] | None = field(default=None, repr=False)  # the whole group (the ``hindsight`` context)
    correct_threshold: float = 1.0  # reward at or above which a rollout counts as correct

    @property
    def student_correct(self) -> bool:
        return is_correct(self.student, self.correct_threshold)


def is_correct(ep: Episode, threshold: float = 1.0) -> bool:
    return ep.reward >= threshold


def token_set_distance(a: Episode, b: Episode) -> float:
    """``1 − Jaccard`` overlap of the sets of policy-generated token ids of ``a`` and ``b`` (0 for two empty sets)."""
    sa = {t for t, m in zip(a.response_ids, a.policy_mask) if m}
    sb = {t for t, m in zip(b.response_ids, b.policy_mask) if m}
    union = sa | sb
    if not union:
        return 0.0
    return 1.0 - len(sa & sb) / len(union)


def pick_reference(group: Sequence[Episode], *, reference: str = "fewest_searches",
                   correct_threshold: float = 1.0) -> int | None:
    """Index of τ_ref in ``group`` under rule ``reference`` (module docstring), or None without a correct rollout."""
    if reference not in REFERENCE_RULES:
        raise ConfigError(f"unknown reference rule '{reference}' (fix: use one of: {', '.join(REFERENCE_RULES)})")
    correct = [i for i, ep in enumerate(group) if is_correct(ep, correct_threshold)]
    if not correct:
        return None
    if reference == "fewest_searches":
        return min(correct, key=lambda i: (group[i].searches, group[i].num_policy_tokens, i))
    return min(correct, key=lambda i: (group[i].num_policy_tokens, i))


def _pick_students(group: Sequence[Episode], ref: int, student: str, distance: Distance,
                   correct_threshold: float) -> list[int]:
    others = [i for i in range(len(group)) if i != ref]
    if student == "all_others" or not others:
        return others
    wrong = [i for i in others if not is_correct(group[i], correct_threshold)]
    pool = wrong or others
    dist = {i: float(distance(group[ref], group[i])) for i in pool}
    return [min(pool, key=lambda i: (-dist[i], i))]


def mine_pairs(
    groups: Sequence[Sequence[Episode]],
    *,
    student: Literal["most_different", "all_others"] = "most_different",
    reference: Literal["fewest_searches", "shortest"] = "fewest_searches",
    distance: Distance | None = None,
    correct_threshold: float = 1.0,
) -> tuple[list[Pair], dict[str, float]]:
    """Mine distillation pairs from groups of rollouts (one group = the K rollouts of one question).

    Returns the pairs (in group order) and stats: ``ofsd/groups``, ``ofsd/pairs``, ``ofsd/skipped_no_correct``,
    ``ofsd/skipped_no_student``, ``ofsd/student_correct_frac`` (pairs whose student is itself correct),
    ``ofsd/ref_searches`` and ``ofsd/student_searches`` (means over pairs; 0 without pairs).
    """
    if student not in STUDENT_RULES:
        raise ConfigError(f"unknown student rule '{student}' (fix: use one of: {', '.join(STUDENT_RULES)})")
    if reference not in REFERENCE_RULES:
        raise ConfigError(f"unknown reference rule '{reference}' (fix: use one of: {', '.join(REFERENCE_RULES)})")
    dist = distance or token_set_distance
    pairs: list[Pair] = []
    no_correct = no_student = 0
    for gi, group in enumerate(groups):
        group = list(group)
        if len({ep.question for ep in group}) > 1:
            raise ValueError(f"group {gi} mixes rollouts of different questions; a group must hold the K rollouts "
                             "of one question")
        ref = pick_reference(group, reference=reference, correct_threshold=correct_threshold)
        if ref is None:
            no_correct += 1
            continue
        students = _pick_students(group, ref, student, dist, correct_threshold)
        if not students:
            no_student += 1
            continue
        r = group[ref]
        for si in students:
            pairs.append(Pair(question=r.question, answers=list(r.answers), reference=r, student=group[si],
                              group_index=gi, reference_index=ref, student_index=si, group=group,
                              correct_threshold=correct_threshold))
    n = len(pairs)
    stats = {
        "ofsd/groups": float(len(groups)),
        "ofsd/pairs": float(n),
        "ofsd/skipped_no_correct": float(no_correct),
        "ofsd/skipped_no_student": float(no_student),
        "ofsd/student_correct_frac": sum(p.student_correct for p in pairs) / n if n else 0.0,
        "ofsd/ref_searches": sum(p.reference.searches for p in pairs) / n if n else 0.0,
        "ofsd/student_searches": sum(p.student.searches for p in pairs) / n if n else 0.0,
    }
    return pairs, stats
