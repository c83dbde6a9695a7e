"""KL to a reference policy (the k3 estimator) and memory-efficient per-token log-probs from logits.

**k3 KL** (Schulman's low-variance unbiased estimator of KL(π_θ ‖ π_ref) from samples of π_θ), per token::

    d = logp_ref − logp;   k3 = exp(d) − d − 1   (≥ 0, = 0 iff logp_ref == logp)

reduced over the policy mask with the same aggregations as the policy loss (:mod:`searche1.algos.aggregate`).
Search-E1 uses **no KL penalty** (β = 0). With β = 0 the caller must not call this at all, so no reference model is
kept or run: the trainer only builds a reference policy and adds ``β · kl`` when β > 0. Departures from the usual
GRPO k3 (DeepSeekMath, TRL): ``d`` is set to 0 at masked positions and clamped to ``[−20, 20]`` before ``exp``, so one
extreme token cannot overflow the loss to inf.

**token_logprobs(logits, ids)** returns ``log softmax(logits)[ids]`` in fp32 without ever holding a full fp32 copy of
the ``(B, T, V)`` logits. The simple ``log_softmax(logits.float(), -1).gather(...)`` materialises the fp32 copy *and*
keeps it for the backward pass (for bf16 logits, B·T = 16k tokens and V = 151k that is ~10 GB). Here a custom autograd
function computes ``logit[id] − logsumexp(logits)`` over blocks of rows (one fp32 block at a time), saves only the
original logits (already alive in the graph) and the ``(B, T)`` logsumexp, and in the backward pass recomputes the
softmax block by block to write ``g · (onehot − softmax) / temperature`` straight into a gradient in the logits' dtype.
Blocks are slices of the ``(B, T, V)`` tensor, so a non-contiguous view such as ``logits[:, :-1]`` is not copied.
The caller shifts (logits at t predict ids at t+1) and masks; ``ids`` must be valid token ids everywhere (use any
valid id, e.g. the pad id, at masked positions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from searche1.algos.aggregate import DEFAULT_AGG, masked_aggregate, masked_mean
from searche1.errors import ConfigError

__all__ = ["DEFAULT_REF_KL", "REF_KL", "RefKLFn", "get_ref_kl", "k3_per_token", "kl_k3", "token_logprobs"]

RefKLFn = Callable[..., tuple[Tensor, dict[str, float]]]

DEFAULT_REF_KL = "k3"

#: Bound on |logp_ref − logp| before exp.
LOG_DIFF_CLAMP = 20.0

#: Default number of fp32 elements held at once by :func:`token_logprobs` (2^26 floats = 256 MiB).
DEFAULT_BLOCK_ELEMS = 1 << 26


def k3_per_token(
    logp: Tensor,  # (B, T) policy log-probs of the taken tokens (has grad)
    ref_logp: Tensor,  # (B, T) reference log-probs
    mask: Tensor | None = None,  # (B, T) optional; d = 0 where mask == 0
) -> Tensor:  # (B, T) k3 >= 0
    """Per-token ``exp(d) − d − 1`` with ``d = ref_logp − logp`` (clamped to ±20; 0 where masked)."""
    dtype = torch.promote_types(logp.dtype, torch.float32)
    d = ref_logp.detach().to(dtype) - logp.to(dtype)  # (B, T)
    if mask is not None:
        d = torch.where(mask != 0, d, torch.zeros((), dtype=dtype, device=d.device))
    d = d.clamp(-LOG_DIFF_CLAMP, LOG_DIFF_CLAMP)
    return torch.exp(d) - d - 1.0


def kl_k3(
    logp: Tensor,  # (B, T)
    ref_logp: Tensor,  # (B, T)
    mask: Tensor,  # (B, T) 1 = policy-sampled token
    *,
    agg: str = DEFAULT_AGG,
    max_len: int | None = None,
    denom: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:  # () KL loss (multiply by β yourself), metrics
    """k3 KL to the reference over policy tokens, reduced by ``agg``; metrics ``loss/kl_ref`` (the loss) and
    ``loss/kl_ref_token_mean`` (the per-token mean, whatever ``agg``)."""
    if logp.dim() != 2 or ref_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(f"logp, ref_logp and mask must all be (B, T); got {tuple(logp.shape)}, "
                         f"{tuple(ref_logp.shape)}, {tuple(mask.shape)}")
    k3 = k3_per_token(logp, ref_logp, mask)  # (B, T)
    loss = masked_aggregate(k3, mask, agg, max_len=max_len, denom=denom)
    with torch.no_grad():
        stats = torch.stack([loss.detach(), masked_mean(k3, mask)]).tolist()
    return loss, {"loss/kl_ref": stats[0], "loss/kl_ref_token_mean": stats[1]}


#: name -> ``fn(logp, ref_logp, mask, *, agg, max_len, denom) -> (kl, metrics)``.
REF_KL: dict[str, RefKLFn] = {"k3": kl_k3}


def get_ref_kl(name: str = DEFAULT_REF_KL) -> RefKLFn:
    """The reference-KL estimator registered as ``name``; an unknown name fails listing the valid ones."""
    try:
        return REF_KL[name]
    except KeyError:
        valid = ", ".join(sorted(REF_KL))
        raise ConfigError(f"unknown reference KL '{name}' (fix: use one of: {valid})") from None


# --------------------------------------------------------------------------------------------------------------------
# token log-probs


def _blocks(b: int, t: int, rows: int) -> Iterator[tuple[slice, slice]]:
    """(batch slice, time slice) blocks of at most ``rows`` positions covering a (b, t) grid."""
    rows = max(1, rows)
    if t >= rows:
        for i in range(b):
            for j in range(0, t, rows):
                yield slice(i, i + 1), slice(j, min(t, j + rows))
    else:
        per = max(1, rows // max(t, 1))
        for i in range(0, b, per):
            yield slice(i, min(b, i + per)), slice(0, t)


def _scaled(block: Tensor, temperature: float, *, writable: bool) -> Tensor:
    """An fp32 (fp64 for fp64) copy of ``block / temperature``; ``writable`` guarantees it never aliases ``block``."""
    x = block if block.dtype == torch.float64 else block.float()
    if writable and x.data_ptr() == block.data_ptr():  # fp32/fp64 input: no cast happened
        x = x.clone()
    if temperature != 1.0:
        x = x.div_(temperature) if x.data_ptr() != block.data_ptr() else x / temperature
    return x


class _TokenLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, ids: Tensor, temperature: float, rows: int) -> Tensor:  # type: ignore[override]
        b, t, _ = logits.shape
        out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        lse = torch.empty((b, t), dtype=out_dtype, device=logits.device)  # (B, T)
        picked = torch.empty((b, t), dtype=out_dtype, device=logits.device)  # (B, T)
        for bs, ts in _blocks(b, t, rows):
            x = _scaled(logits[bs, ts], temperature, writable=False)  # (b', t', V) fp32
            lse[bs, ts] = torch.logsumexp(x, dim=-1)
            picked[bs, ts] = x.gather(-1, ids[bs, ts].unsqueeze(-1)).squeeze(-1)
        ctx.save_for_backward(logits, ids, lse)
        ctx.temperature = temperature
        ctx.rows = rows
        return picked - lse

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        logits, ids, lse = ctx.saved_tensors
        b, t, _ = logits.shape
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)  # (B, T, V)
        g = grad_out.to(lse.dtype)  # (B, T)
        for bs, ts in _blocks(b, t, ctx.rows):
            p = _scaled(logits[bs, ts], ctx.temperature, writable=True)  # (b', t', V)
            p.sub_(lse[bs, ts].unsqueeze(-1)).exp_()  # softmax
            gb = g[bs, ts].unsqueeze(-1)  # (b', t', 1)
            p.mul_(-gb).scatter_add_(-1, ids[bs, ts].unsqueeze(-1), gb)  # g * (onehot - softmax)
            if ctx.temperature != 1.0:
                p.div_(ctx.temperature)
            grad[bs, ts] = p.to(grad.dtype)
        return grad, None, None, None


def token_logprobs(
    logits: Tensor,  # (B, T, V) any float dtype (bf16 typical)
    ids: Tensor,  # (B, T) token ids in [0, V)
    *,
    temperature: float = 1.0,
    block_elems: int = DEFAULT_BLOCK_ELEMS,
) -> Tensor:  # (B, T) fp32 (fp64 for fp64 logits)
    """``log_softmax(logits / temperature)`` gathered at ``ids``, computed in fp32 block by block (see module doc).

    ``temperature`` must match the sampler's, so that ratios to the sampling log-probs start at 1. Also accepts
    ``(N, V)`` logits with ``(N,)`` ids.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0 for log-probs, got {temperature} (fix: use the sampling "
                          "temperature; greedy decoding has no log-prob ratio)")
    squeeze = logits.dim() == 2
    if squeeze:
        logits, ids = logits.unsqueeze(0), ids.unsqueeze(0)
    if logits.dim() != 3 or ids.shape != logits.shape[:2]:
        raise ValueError(f"expected logits (B, T, V) and ids (B, T); got {tuple(logits.shape)} and {tuple(ids.shape)}")
    rows = max(1, block_elems // max(1, logits.shape[-1]))
    out = _TokenLogprob.apply(logits, ids.long(), float(temperature), rows)
    return out.squeeze(0) if squeeze else out

