"""Log-probs of the tokens a loss needs, from a causal LM, with the LM head computed only where they are.

A multi-turn episode is mostly prompt and retrieved passages (the CPU demo: ~30 policy tokens in ~500), but the
GRPO loss, its reference KL, the trainer's re-scoring of the sampler's tokens and the warm-up's cross-entropy need
log-probs at the policy's own tokens only. Full logits cost the vocabulary projection at every position (SmolLM2:
576 × 49,152, a fifth of the forward FLOPs, and as much again in the backward pass) plus a (B, T, V) fp32 log-softmax
and its gradient (~600 MB for 4 rows of 800 tokens). :func:`masked_logprobs` asks the model for the logits of the
columns where some row of the micro-batch has a loss token (``logits_to_keep`` as an index tensor) and scatters the
log-probs back to (B, T-1), zeros elsewhere. Loss and gradients are the same as with full logits, since every
skipped position is masked out of every loss; only the order of floating-point sums changes. A model whose
``forward`` has no ``logits_to_keep`` (or ignores it) gets full logits, then the same columns.
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether ``model.forward`` (a peft model's base model's) takes ``logits_to_keep``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):  # a forward without an inspectable signature
        return False


def kept_columns(mask: Tensor) -> Tensor:  # (K,) long, sorted, K >= 1
    """The columns of ``mask`` (B, T-1) where any row is on; column 0 alone when none is (a row batch with no loss
    token still runs a forward and backward: distributed ranks move in lockstep)."""
    cols = mask.ne(0).any(0).nonzero().flatten()
    return cols if cols.numel() else torch.zeros(1, dtype=torch.long)


def masked_logprobs(model: Any, ids: Tensor, attn: Tensor, mask: Tensor, *, temperature: float = 1.0,
                    device: Any = "cpu", autocast: bool = False) -> Tensor:  # (B, T-1) fp32 on ``device``
    """``log p(ids[:, t+1] | ids[:, :t+1])`` where ``mask`` (B, T-1) is non-zero, 0 elsewhere.

    ``ids``/``attn`` (B, T) right-padded (any device); ``temperature`` as in :func:`searche1.algos.token_logprobs`;
    ``autocast``: the forward under bf16 autocast on ``device``. Differentiable when called with grad enabled.
    """
    from searche1.algos import token_logprobs

    B, T = ids.shape
    cols = kept_columns(mask).to(device)
    kw = {"logits_to_keep": cols} if accepts_logits_to_keep(model) and cols.numel() < T - 1 else {}
    ctx = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16) if autocast
           else nullcontext())
    with ctx:
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), **kw).logits
    if logits.shape[1] != cols.numel():  # full logits (no logits_to_keep, or every column kept)
        logits = logits[:, cols]
    lp = token_logprobs(logits, ids.to(device)[:, cols + 1], temperature=temperature)  # (B, K) fp32
    on = mask.to(device)[:, cols].ne(0)  # (B, K): a kept column is another row's loss token, not this row's
    return lp.new_zeros((B, T - 1)).index_copy(1, cols, lp * on)
