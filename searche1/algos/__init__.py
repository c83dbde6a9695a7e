"""Pure tensor math for RL on search agents: tensors in, ``(loss or values, metrics)`` out.

Imports no model, trainer or config. Each family sits in a small registry keyed by name; an unknown name raises
:class:`searche1.errors.ConfigError` listing the valid ones.

- :mod:`.advantages` — ``ADVANTAGES`` (``grpo``, ``no_std``): group-relative advantages per rollout.
- :mod:`.policy_losses` — ``POLICY_LOSSES`` (``token_mean``, ``seq_mean_token_mean``, ``dr_grpo``): the clipped
  surrogate, keyed by its aggregation (:mod:`.aggregate`).
- :mod:`.importance` — :func:`truncated_is_weights`: per-token truncated importance weights for the gap between
  the sampler (vLLM, a bf16 copy) and the trainer (``grpo.tis_cap``; off in Search-E1).
- :mod:`.kl` — ``REF_KL`` (``k3``): KL to a reference policy (unused by Search-E1, β = 0), and
  :func:`token_logprobs`, memory-efficient fp32 log-probs of the taken tokens.

Search-E1 = ``get_advantage("grpo")`` + ``get_policy_loss(...)`` with ``clip_low = clip_high = 0.2``, no KL, and a
mask that is 1 only on tokens the policy sampled (retrieved ``<information>`` tokens masked out).
"""

from searche1.algos.advantages import (
    ADVANTAGES,
    DEFAULT_ADVANTAGE,
    get_advantage,
    group_advantages,
    grpo_advantages,
    no_std_advantages,
)
from searche1.algos.aggregate import AGGREGATIONS, DEFAULT_AGG, masked_aggregate, masked_mean
from searche1.algos.distill import DISTILL_LOSSES, forward_kl_topk, get_distill_loss, topk_teacher
from searche1.algos.importance import truncated_is_weights
from searche1.algos.kl import DEFAULT_REF_KL, REF_KL, get_ref_kl, k3_per_token, kl_k3, token_logprobs
from searche1.algos.policy_losses import (
    DEFAULT_POLICY_LOSS,
    POLICY_LOSSES,
    clipped_surrogate,
    get_policy_loss,
    policy_loss,
)

__all__ = [
    "truncated_is_weights",
    "DISTILL_LOSSES",
    "forward_kl_topk",
    "get_distill_loss",
    "topk_teacher",
    "ADVANTAGES",
    "AGGREGATIONS",
    "DEFAULT_ADVANTAGE",
    "DEFAULT_AGG",
    "DEFAULT_POLICY_LOSS",
    "DEFAULT_REF_KL",
    "POLICY_LOSSES",
    "REF_KL",
    "clipped_surrogate",
    "get_advantage",
    "get_policy_loss",
    "get_ref_kl",
    "group_advantages",
    "grpo_advantages",
    "k3_per_token",
    "kl_k3",
    "masked_aggregate",
    "masked_mean",
    "no_std_advantages",
    "policy_loss",
    "token_logprobs",
]
