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

The rows of a batch share the start of their prompts: the G rollouts of a GRPO group their whole prompt (the CPU
demo: ~145 of ~430 tokens), distinct questions the agent instructions (132 tokens). With ``prefix``,
:func:`masked_logprobs` runs that shared prefix once and the rows' continuations on its repeated KV cache;
:func:`micro_batches` (the GRPO update) and the warm-up pass each batch's :func:`shared_prefix_len`. Gradients
reach the prefix through the cache, summed over the rows, as in a forward of every row. Departure from TRL and
veRL, which run every sequence whole: the same loss and gradients for less compute.
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def _forward_params(model: Any) -> Any:
    """The parameters of ``model.forward``; a peft model's forward takes ``**kwargs`` and hands them to its base
    model, whose signature decides. Empty when the signature cannot be read."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    try:
        return inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return {}


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether ``model.forward`` (a peft model's base model's) takes ``logits_to_keep``."""
    return "logits_to_keep" in _forward_params(model)


def cache_kwarg(model: Any) -> str:
    """The name of ``model.forward``'s KV-cache argument: ``cache`` in recent transformers, ``past_key_values``
    before (and still accepted, with a deprecation warning)."""
    return "cache" if "cache" in _forward_params(model) else "past_key_values"


def kept_columns(mask: Tensor) -> Tensor:  # (K,) long, sorted, K >= 1
    """The columns of ``mask`` (B, T-1) where any row is on; column 0 alone when none is (a row batch with no loss
    token still runs a forward and backward: distributed ranks move in lockstep)."""
    cols = mask.ne(0).any(0).nonzero().flatten()
    return cols if cols.numel() else torch.zeros(1, dtype=torch.long)


def masked_logprobs(model: Any, ids: Tensor, attn: Tensor, mask: Tensor, *, temperature: float = 1.0,
                    device: Any = "cpu", autocast: bool = False, prefix: int = 0) -> Tensor:  # (B, T-1) fp32
    """``log p(ids[:, t+1] | ids[:, :t+1])`` where ``mask`` (B, T-1) is non-zero, 0 elsewhere, on ``device``.

    ``ids``/``attn`` (B, T) right-padded (any device); columns after every row's last token are not run.
    ``temperature`` as in :func:`searche1.algos.token_logprobs`; ``autocast``: the forward under bf16 autocast on
    ``device``. Differentiable when called with grad enabled.

    ``prefix`` > 0: every row starts with the same ``prefix`` real tokens (:func:`shared_prefix_len`, which the
    caller guarantees) and no loss token comes before the last of them. Those tokens then run once (batch 1)
    and their KV cache is repeated for the rows' continuations: the same log-probs and gradients (the prompt's
    gradient is the sum over rows, through the repeated cache), with the prompt's cost paid once instead of B
    times. It needs a model that takes ``past_key_values`` and ``logits_to_keep`` and no gradient checkpointing
    (which turns the cache off): callers check :func:`can_share_prefix`.
    """
    from searche1.algos import token_logprobs

    B, T = ids.shape
    n = int(attn.ne(0).any(0).nonzero().max()) + 1 if attn.ne(0).any() else T  # later columns: padding only
    cols = kept_columns(mask[:, :n - 1]).to(device)
    ids, attn = ids[:, :n].to(device), attn[:, :n].to(device)
    ctx = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16) if autocast
           else nullcontext())
    if 0 < prefix < n and B > 1 and int(cols[0]) >= prefix - 1:
        from transformers import DynamicCache

        kv = {cache_kwarg(model): DynamicCache()}
        with ctx:
            head = model(input_ids=ids[:1, :prefix], attention_mask=attn[:1, :prefix], use_cache=True,
                         logits_to_keep=1, **kv).logits  # (1, 1, V): predicts token ``prefix``
            next(iter(kv.values())).batch_repeat_interleave(B)
            rest = model(input_ids=ids[:, prefix:], attention_mask=attn, use_cache=True,
                         logits_to_keep=cols[cols >= prefix] - prefix, **kv).logits  # (B, K', V)
        logits = torch.cat([head.expand(B, -1, -1), rest], 1) if int(cols[0]) == prefix - 1 else rest
    else:
        kw = {"logits_to_keep": cols} if accepts_logits_to_keep(model) and cols.numel() < n - 1 else {}
        with ctx:
            logits = model(input_ids=ids, attention_mask=attn, **kw).logits
        if logits.shape[1] != cols.numel():  # full logits (no logits_to_keep, or every column kept)
            logits = logits[:, cols]
    lp = token_logprobs(logits, ids[:, cols + 1], temperature=temperature)  # (B, K) fp32
    on = mask.to(device)[:, cols].ne(0)  # (B, K): a kept column is another row's loss token, not this row's
    return lp.new_zeros((B, T - 1)).index_copy(1, cols, lp * on)


def can_share_prefix(model: Any) -> bool:
    """Whether :func:`masked_logprobs` may run a shared prefix once for ``model``: its forward takes
    ``logits_to_keep`` (and so, in transformers, a cache) and gradient checkpointing is off."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = ("is_activation_checkpointing" if hasattr(type(base), "is_activation_checkpointing")  # transformers 5
            else "is_gradient_checkpointing")
    return accepts_logits_to_keep(model) and not getattr(base, name, False)


#: the shortest common prefix worth running once on its own
MIN_SHARED_PREFIX = 16


def shared_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the prefix every prompt shares, kept one token short of the shortest prompt (each row needs a token
    of its own to give its next-token logits); 0 for a single prompt or a prefix under :data:`MIN_SHARED_PREFIX`.
    Distinct questions share the agent instructions (SmolLM2's chat template: 132 tokens of a ~145-token prompt);
    the G rollouts of a group share their whole prompt, less its last token."""
    if len(prompts) < 2:
        return 0
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return n if n >= MIN_SHARED_PREFIX else 0


def micro_batches(prompts: Sequence[Sequence[int]], micro: int, share: bool) -> list[tuple[list[int], int]]:
    """Consecutive micro-batches of at most ``micro`` rows, as ``(row positions, shared prefix length)``.

    With ``share``, a micro-batch passes the prefix its rows' prompts share (:func:`shared_prefix_len`) as the
    ``prefix`` of :func:`masked_logprobs`, so that prefix runs once per micro-batch: the whole prompt (less its
    last token) when the rows are one GRPO group's, the instructions when they straddle groups. Without: prefix 0.
    """
    return [(rows, shared_prefix_len([prompts[i] for i in rows]) if share else 0)
            for rows in (list(range(s, min(s + micro, len(prompts)))) for s in range(0, len(prompts), micro))]
