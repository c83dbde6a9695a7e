"""Masked reductions of per-token terms to a scalar loss: ``token_mean``, ``seq_mean_token_mean`` and ``dr_grpo``.

Every per-token loss in :mod:`searche1.algos` (the clipped surrogate, the reference KL) is reduced by one of these.
``mask`` is read as a boolean (``mask != 0``): 1 = a token the policy sampled, 0 = prompt, retrieved
``<information>`` text, forced tokens or padding. Masked positions are *selected away* with ``torch.where`` (not
multiplied by 0), so a NaN/inf stored at a masked position cannot leak into the loss and masked tokens get a gradient
of exactly 0.

- ``token_mean`` (default; DAPO): sum over every policy token of the batch / number of policy tokens. Each token
  weighs the same, so long responses are not down-weighted.
- ``seq_mean_token_mean`` (original GRPO, DeepSeekMath): mean over the policy tokens of each sequence, then mean over
  the sequences. A fully masked row has no mean: it is left out of the sequence count (TRL counts it as a 0 instead).
- ``dr_grpo`` (Dr. GRPO, Liu et al. 2025): sum over policy tokens / (number of sequences × ``max_len``), with
  ``max_len`` a constant (the generation budget), so the normaliser never depends on response lengths. Every row of
  the batch counts as a sequence, fully masked ones included.

Gradient accumulation: a micro-batch's default normaliser is its own, so summing micro-batch losses does not give the
full-batch loss. Pass ``denom`` (the normaliser of the whole batch: its token count for ``token_mean``, its non-empty
sequence count for ``seq_mean_token_mean``, sequences × ``max_len`` for ``dr_grpo``) to make the micro-batch losses
add up to the full-batch loss exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from searche1.errors import ConfigError

__all__ = ["AGGREGATIONS", "DEFAULT_AGG", "check_agg", "masked_aggregate", "masked_mean"]

DEFAULT_AGG = "token_mean"

#: The aggregation names, each with a one-line description (the loss registries are keyed by these names).
AGGREGATIONS: dict[str, str] = {
    "token_mean": "sum over policy tokens / number of policy tokens (DAPO)",
    "seq_mean_token_mean": "mean over tokens per sequence, then over sequences (original GRPO)",
    "dr_grpo": "sum over policy tokens / (number of sequences x max_len) (Dr. GRPO)",
}


def check_agg(agg: str) -> str:
    """Return ``agg`` if it is a known aggregation, else raise :class:`ConfigError` listing the valid ones."""
    if agg not in AGGREGATIONS:
        valid = ", ".join(sorted(AGGREGATIONS))
        raise ConfigError(f"unknown loss aggregation '{agg}' (fix: use one of: {valid})")
    return agg


def _check_shapes(x: Tensor, mask: Tensor) -> None:
    if x.dim() != 2 or mask.shape != x.shape:
        raise ValueError(f"expected per-token terms and mask of the same shape (B, T); got {tuple(x.shape)} and "
                         f"{tuple(mask.shape)}")


def masked_aggregate(
    x: Tensor,  # (B, T) per-token terms
    mask: Tensor,  # (B, T) 1 = counts, 0 = ignored
    agg: str = DEFAULT_AGG,
    *,
    max_len: int | None = None,
    denom: float | Tensor | None = None,
) -> Tensor:  # () scalar
    """Reduce per-token terms ``x`` to a scalar with aggregation ``agg`` (see the module docstring).

    ``max_len`` is required by ``dr_grpo`` unless ``denom`` is given. An all-masked batch gives a loss of 0 (still
    attached to the graph, with zero gradient), never NaN.
    """
    check_agg(agg)
    _check_shapes(x, mask)
    keep = mask != 0  # (B, T) bool
    xm = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))  # (B, T)
    if agg == "token_mean":
        d = keep.sum().clamp(min=1) if denom is None else denom
        return xm.sum() / d
    if agg == "seq_mean_token_mean":
        n_tok = keep.sum(dim=1)  # (B,)
        per_seq = xm.sum(dim=1) / n_tok.clamp(min=1)  # (B,) exactly 0 for empty rows
        d = (n_tok > 0).sum().clamp(min=1) if denom is None else denom
        return per_seq.sum() / d
    # dr_grpo
    if denom is None:
        if max_len is None or max_len <= 0:
            raise ConfigError("aggregation 'dr_grpo' needs a constant max_len > 0 (fix: pass max_len = the "
                              "generation budget in tokens, or denom = sequences x max_len)")
        denom = x.shape[0] * max_len
    return xm.sum() / denom


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:  # () scalar
    """Mean of ``x`` over positions where ``mask != 0`` (0 when nothing is selected)."""
    keep = mask != 0
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum() / keep.sum().clamp(min=1)
