"""The PPO/GRPO clipped surrogate policy loss, per token, with a choice of aggregation.

Per policy token ``t`` of sequence ``b``::

    ρ = exp(logp_new − logp_old)                          # ratio to the sampling policy
    ℓ = −min(ρ·A_b, clip(ρ, 1 − clip_low, 1 + clip_high)·A_b)

then ``ℓ`` is reduced over the mask by ``token_mean`` (default), ``seq_mean_token_mean`` or ``dr_grpo``
(see :mod:`searche1.algos.aggregate`). ``mask`` must be 1 only on tokens the policy sampled: Search-E1 masks the
retrieved ``<information>`` tokens (and the prompt) out of the loss, which this function does through the mask alone.

How this departs from the paper (vanilla GRPO, ε = 0.2, no KL term, per-sequence mean as in DeepSeekMath):

- The default aggregation is ``token_mean`` (DAPO); the paper's presumed original-GRPO reduction is
  ``seq_mean_token_mean``. Both are in the registry, with ``dr_grpo``.
- ``clip_low`` and ``clip_high`` are separate (DAPO's "clip-higher"); equal values (0.2) are vanilla PPO clipping.
- The log-ratio is set to 0 at masked positions (so garbage old log-probs there cannot overflow) and clamped to
  ``[−20, 20]`` before ``exp``: an inf ratio would give a NaN gradient through ``exp``'s backward.
- There is no KL to a reference policy here (β = 0 in Search-E1); add :func:`searche1.algos.kl.kl_k3` if wanted.
- ``advantages`` may also be ``(B, T)`` per-token values; ``(B,)`` is broadcast over the tokens of each sequence.
- ``is_weight`` (optional, ``(B, T)``, no gradient) multiplies each token's ``ℓ`` before the reduction: the truncated
  importance weights of :mod:`searche1.algos.importance` (sampler vs trainer), off unless ``grpo.tis_cap`` is set.

Metrics (Python floats, over masked tokens): ``loss/policy``, ``loss/clip_frac`` (tokens whose gradient the clip
removes: ρ > 1+ε_high with A > 0, or ρ < 1−ε_low with A < 0), ``loss/clip_frac_high``, ``loss/clip_frac_low``,
``loss/ratio_mean``, ``loss/ratio_max``, ``loss/approx_kl`` (the k3 estimate of KL(old ‖ new),
``mean((ρ − 1) − log ρ)``, ≥ 0) and ``loss/num_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from searche1.algos.aggregate import AGGREGATIONS, DEFAULT_AGG, check_agg, masked_aggregate
from searche1.errors import ConfigError

__all__ = ["DEFAULT_POLICY_LOSS", "POLICY_LOSSES", "PolicyLossFn", "clipped_surrogate", "get_policy_loss",
           "policy_loss"]

PolicyLossFn = Callable[..., tuple[Tensor, dict[str, float]]]

DEFAULT_POLICY_LOSS = DEFAULT_AGG

#: Bound on |log ρ| before exp (e^20 ≈ 5e8: far outside any clip range, far from fp32 overflow).
LOG_RATIO_CLAMP = 20.0


def clipped_surrogate(
    logp: Tensor,  # (B, T) log-probs of the taken tokens under the policy being trained (has grad)
    old_logp: Tensor,  # (B, T) log-probs under the sampling policy
    advantages: Tensor,  # (B,) one per sequence, or (B, T)
    mask: Tensor,  # (B, T) 1 = policy-sampled token, 0 = prompt / retrieved / forced / padding
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    agg: str = DEFAULT_AGG,
    max_len: int | None = None,
    denom: float | Tensor | None = None,
    is_weight: Tensor | None = None,  # (B, T) per-token weights (no gradient), e.g. truncated importance weights
) -> tuple[Tensor, dict[str, float]]:  # () loss, metrics
    """Clipped surrogate loss aggregated with ``agg``; ``max_len`` for ``dr_grpo``, ``denom`` for micro-batches.

    See the module docstring. Computes in fp32 (fp64 if ``logp`` is fp64) whatever the input dtype.
    """
    check_agg(agg)
    if logp.dim() != 2 or old_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(f"logp, old_logp and mask must all be (B, T); got {tuple(logp.shape)}, "
                         f"{tuple(old_logp.shape)}, {tuple(mask.shape)}")
    dtype = torch.promote_types(logp.dtype, torch.float32)
    keep = mask != 0  # (B, T)
    adv = advantages.detach().to(dtype)
    if adv.dim() == 1:
        if adv.shape[0] != logp.shape[0]:
            raise ValueError(f"advantages must be (B,) or (B, T) with B={logp.shape[0]}; got {tuple(adv.shape)}")
        adv = adv.unsqueeze(1).expand_as(logp)  # (B, T)
    elif adv.shape != logp.shape:
        raise ValueError(f"advantages must be (B,) or (B, T) matching logp {tuple(logp.shape)}; got {tuple(adv.shape)}")
    adv = torch.where(keep, adv, torch.zeros((), dtype=dtype, device=adv.device))  # (B, T)

    zero = torch.zeros((), dtype=dtype, device=logp.device)
    log_ratio = torch.where(keep, logp.to(dtype) - old_logp.detach().to(dtype), zero)  # (B, T)
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = ratio * adv  # (B, T)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv  # (B, T)
    per_token = -torch.minimum(unclipped, clipped)  # (B, T)
    if is_weight is not None:
        if is_weight.shape != logp.shape:
            raise ValueError(f"is_weight must be (B, T) like logp {tuple(logp.shape)}; got {tuple(is_weight.shape)}")
        per_token = per_token * is_weight.detach().to(dtype)
    loss = masked_aggregate(per_token, mask, agg, max_len=max_len, denom=denom)

    with torch.no_grad():
        n = keep.sum().clamp(min=1).to(dtype)
        high = keep & (ratio > 1.0 + clip_high) & (adv > 0)  # (B, T)
        low = keep & (ratio < 1.0 - clip_low) & (adv < 0)  # (B, T)
        k3 = (ratio - 1.0) - log_ratio  # (B, T) k3 estimate of KL(old || new), 0 at masked positions
        stats = torch.stack([
            loss.detach().to(dtype),
            (high | low).sum() / n,
            high.sum() / n,
            low.sum() / n,
            torch.where(keep, ratio, zero).sum() / n,
            torch.where(keep, ratio, zero).max(),  # ratios are > 0, so the 0 fill never wins
            torch.where(keep, k3, zero).sum() / n,
            keep.sum().to(dtype),
        ]).tolist()
    metrics = dict(zip(("loss/policy", "loss/clip_frac", "loss/clip_frac_high", "loss/clip_frac_low",
                        "loss/ratio_mean", "loss/ratio_max", "loss/approx_kl", "loss/num_tokens"), stats))
    return loss, metrics


def policy_loss(
    logp: Tensor,  # (B, T)
    old_logp: Tensor,  # (B, T)
    advantages: Tensor,  # (B,) or (B, T)
    mask: Tensor,  # (B, T)
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    agg: str = DEFAULT_AGG,
    max_len: int | None = None,
    denom: float | Tensor | None = None,
    is_weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The clipped surrogate with aggregation ``agg`` (an unknown name fails listing the valid ones)."""
    return get_policy_loss(agg)(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high,
                                max_len=max_len, denom=denom, is_weight=is_weight)


def _bind(agg: str) -> PolicyLossFn:
    def fn(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, clip_low: float = 0.2,
           clip_high: float = 0.2, max_len: int | None = None, denom: float | Tensor | None = None,
           is_weight: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        return clipped_surrogate(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high, agg=agg,
                                 max_len=max_len, denom=denom, is_weight=is_weight)

    fn.__name__ = fn.__qualname__ = f"clipped_surrogate_{agg}"
    fn.__doc__ = f"Clipped surrogate reduced by '{agg}': {AGGREGATIONS[agg]}."
    return fn


#: aggregation name -> ``fn(logp, old_logp, advantages, mask, *, clip_low, clip_high, max_len, denom, is_weight)``.
POLICY_LOSSES: dict[str, PolicyLossFn] = {name: _bind(name) for name in AGGREGATIONS}


def get_policy_loss(name: str = DEFAULT_POLICY_LOSS) -> PolicyLossFn:
    """The policy loss registered as ``name``; an unknown name fails listing the valid ones."""
    try:
        return POLICY_LOSSES[name]
    except KeyError:
        valid = ", ".join(sorted(POLICY_LOSSES))
        raise ConfigError(f"unknown policy loss '{name}' (fix: use one of: {valid})") from None
