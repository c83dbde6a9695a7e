"""The OFSD phase's data side: pair mining (:mod:`.pairs`) and privileged teacher contexts (:mod:`.contexts`).

The losses are pure tensor functions in :mod:`searche1.algos.distill` (``DISTILL_LOSSES``: forward_kl, reverse_kl,
jsd; plus the top-k teacher approximation).
"""

from searche1.ofsd.contexts import (
    CONTEXTS,
    DEFAULT_CONTEXT,
    TeacherSequence,
    get_context,
    student_prompt_ids,
    student_sequence,
    teacher_prompt,
    teacher_sequence,
)
from searche1.ofsd.pairs import (
    REFERENCE_RULES,
    STUDENT_RULES,
    Pair,
    is_correct,
    mine_pairs,
    pick_reference,
    token_set_distance,
)

__all__ = [
    "CONTEXTS",
    "DEFAULT_CONTEXT",
    "REFERENCE_RULES",
    "STUDENT_RULES",
    "Pair",
    "TeacherSequence",
    "get_context",
    "is_correct",
    "mine_pairs",
    "pick_reference",
    "student_prompt_ids",
    "student_sequence",
    "teacher_prompt",
    "teacher_sequence",
    "token_set_distance",
]
