"""Truncated importance sampling (TIS) for the gap between the sampler and the trainer.

A vLLM engine or a bf16 sampling copy draws the rollouts from ``π_sampler``, which differs slightly from the
trainer's ``π_old`` (its own log-probs of the same tokens, in its own precision: the PPO "old" policy). The PPO ratio
is taken against ``π_old``, so the tokens were drawn from a slightly different distribution than the gradient
assumes. Token-level TIS (Yao et al., 2025, "Your efficient RL framework secretly brings you off-policy RL
training"; veRL's ``tis_imp_ratio_cap``, TRL's ``vllm_importance_sampling_correction``) weights each token's
clipped surrogate by

    w_t = min(π_old(y_t) / π_sampler(y_t), C)        (no gradient through w)

Departures: Search-E1 does not mention a correction, so it is off by default (``grpo.tis_cap: 0``); the weight
multiplies the policy surrogate only, not a reference KL term; the log-ratio is clamped to ``[−20, 20]`` before
``exp`` and positions outside ``mask`` get weight 1 (their loss is masked anyway).

Metrics (over masked tokens): ``loss/is_weight_mean`` (mean of ``w``), ``loss/is_capped_frac`` (share of tokens
whose ratio exceeded ``C``) and ``loss/is_ratio_max`` (the largest ratio before the cap; 0 with no policy token).
"""

from __future__ import annotations

import torch
from torch import Tensor

from searche1.algos.policy_losses import LOG_RATIO_CLAMP

__all__ = ["truncated_is_weights"]


@torch.no_grad()
def truncated_is_weights(
    old_logp: Tensor,  # (B, T) the trainer's log-probs of the sampled tokens (π_old)
    sampler_logp: Tensor,  # (B, T) the sampler's log-probs of the same tokens
    mask: Tensor,  # (B, T) 1 = policy-sampled token
    cap: float,
) -> tuple[Tensor, dict[str, float]]:  # (B, T) fp32 weights, metrics
    """``min(exp(old_logp − sampler_logp), cap)`` at masked positions, 1 elsewhere; see the module docstring."""
    if not cap > 0:
        raise ValueError(f"cap must be > 0; got {cap}")
    if old_logp.shape != sampler_logp.shape or mask.shape != old_logp.shape or old_logp.dim() != 2:
        raise ValueError(f"old_logp, sampler_logp and mask must all be (B, T); got {tuple(old_logp.shape)}, "
                         f"{tuple(sampler_logp.shape)}, {tuple(mask.shape)}")
    dtype = torch.promote_types(old_logp.dtype, torch.float32)
    keep = mask != 0
    log_ratio = (old_logp.to(dtype) - sampler_logp.to(dtype)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)  # (B, T)
    one = torch.ones((), dtype=dtype, device=ratio.device)
    weights = torch.where(keep, ratio.clamp(max=cap), one)  # (B, T)
    n = keep.sum().clamp(min=1).to(dtype)
    mean, capped, top = torch.stack([torch.where(keep, weights, 0 * one).sum() / n,
                                     (keep & (ratio > cap)).sum() / n,
                                     torch.where(keep, ratio, 0 * one).max()]).tolist()  # ratios > 0: 0 never wins
    return weights, {"loss/is_weight_mean": mean, "loss/is_capped_frac": capped, "loss/is_ratio_max": top}
