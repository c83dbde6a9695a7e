"""Token-level distillation losses for the OFSD phase: forward KL (the paper's), reverse KL, generalised JSD, and a
top-k teacher approximation of forward KL with a tail bucket.

Inputs are aligned logits: ``student_logits`` (B, T, V) with grad (the trainable policy on the plain prompt) and
``teacher_logits`` (B, T, V) (the frozen policy on the privileged prompt; detached here), position ``t`` of both
predicting the same token, and ``mask`` (B, T): 1 exactly at the student trajectory's policy-sampled tokens (never
prompt, ``<information>`` or padding). Both logits are divided by ``temperature`` (default 1; no ``τ²`` rescaling, as
in TRL's GKD). Per position ``t`` with ``p_T``, ``p_S`` the two softmaxes, each divergence is a sum of per-entry
terms ``e_v`` over the vocabulary:

- ``forward_kl`` (paper, default): ``e_v = p_T(v) · (log p_T(v) − log p_S(v))``        → KL(p_T ‖ p_S)
- ``reverse_kl``:                   ``e_v = p_S(v) · (log p_S(v) − log p_T(v))``        → KL(p_S ‖ p_T)
- ``jsd`` (generalised JSD, GKD / TRL convention): ``m = β·p_T + (1 − β)·p_S`` and
  ``e_v = β · p_T(v) · log(p_T(v)/m(v)) + (1 − β) · p_S(v) · log(p_S(v)/m(v))`` → β·KL(p_T ‖ m) + (1 − β)·KL(p_S ‖ m).
  ``β = 0.5`` (default) is the symmetric Jensen-Shannon divergence. As in TRL, ``β = 0`` is *defined* as forward
  KL(p_T ‖ p_S) and ``β = 1`` as reverse KL(p_S ‖ p_T) (the mixture formula itself is 0 at both ends).

**Point-wise clip** (DESIGN §1.5, reconstructed): the per-token loss is ``Σ_v clamp(e_v, −c, c)`` with ``c = clip``
(default :data:`DEFAULT_CLIP` = 10.0; ``None`` disables it). It is applied to the entries of every divergence, so an
ablation that changes the divergence changes nothing else. Where an entry is clipped its own term is constant, so it
passes **no gradient** (``torch.clamp`` semantics; the other entries still move that logit through the softmax
normaliser). Forward-KL entries are bounded below by ``−1/e`` (``p·log p ≥ −1/e``), so in practice the clip only
bites on entries above ``c``: a token the teacher gives mass ``p_T`` while the student gives it less than
``p_T · e^{−c/p_T}``. With ``c = 10`` that needs a ≥ e^10 probability ratio: rare, which is the point.

Gradients are closed form: with ``w_v = ∂L_t/∂p_S(v)`` (0 on clipped entries) the softmax chain rule gives
``∂L_t/∂z_j = p_S(j)·w_j − p_S(j)·Σ_v p_S(v)·w_v``. Unclipped forward KL gives the familiar ``p_S − p_T``.

**Memory.** Each loss is a custom autograd function that works on blocks of positions in fp32 (``block_elems`` fp32
elements per temporary, about 9 temporaries per block), saves only the input logits (alive in the graph anyway), and
recomputes the softmaxes block by block in the backward pass, writing the gradient straight into the student logits'
dtype. No full fp32 ``(B, T, V)`` copy is ever held. Positions whose mask is 0 get loss 0 and gradient exactly 0
(blocks that are fully masked are not computed at all).

**Top-k teacher with a tail bucket** (:func:`topk_teacher`, :func:`forward_kl_topk`): the teacher is stored as its
``k`` most likely token ids, their log-probs, and ``log(1 − Σ top-k p_T)`` (the tail); the student is collapsed onto
the same ``k`` ids plus one bucket holding the rest of its mass, and forward KL is taken over those ``k + 1`` buckets.
By the data processing inequality (merging outcomes never increases a KL) this is a **lower bound** of the exact
forward KL (without the clip), exact when ``k = V`` or when the teacher's tail is distributed like the student's.
Its gradient differs from the exact one: inside the tail the student is only pushed on its total tail mass, not on
how it spreads it. The error grows with the teacher's tail mass. Measured (tests/test_distill.py::
test_topk_error_peaked, V = 2000, k = 64, teacher logits N(0, 1) plus 8 "plausible" tokens boosted by U[b/2, 3b/2],
student = teacher + N(0, 1) noise, 128 positions): b = 8 → top-64 mass 0.969, relative error of the mean per-token
KL 5.2 %; b = 10 → mass 0.9966, error 0.65 %; b = 12 → mass 0.9996, error 0.07 % (roughly 1.7 × the tail mass). The
test asserts error ≤ 2 × tail mass + 1e-3. It is the cheap way to cache teacher targets (k ids + k + 1 floats per
token instead of V).

Metrics (Python floats, over masked tokens): ``ofsd/loss`` (the aggregated loss), ``ofsd/kl`` (mean per-token
divergence *before* clipping, whatever the divergence), ``ofsd/clip_frac`` (fraction of the masked tokens' entries
that were clipped; ``k + 1`` entries per token for the top-k loss) and ``ofsd/tokens`` (number of masked tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from searche1.algos.aggregate import DEFAULT_AGG, check_agg, masked_aggregate, masked_mean
from searche1.algos.kl import _blocks  # shared position blocking
from searche1.errors import ConfigError

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_CLIP",
    "DEFAULT_DISTILL_LOSS",
    "DEFAULT_TOPK",
    "DISTILL_LOSSES",
    "DistillLossFn",
    "forward_kl",
    "forward_kl_topk",
    "get_distill_loss",
    "jsd",
    "reverse_kl",
    "topk_teacher",
]

DistillLossFn = Callable[..., tuple[Tensor, dict[str, float]]]

DEFAULT_DISTILL_LOSS = "forward_kl"
#: Point-wise clip on each vocabulary entry's term (reconstructed; ``None`` disables).
DEFAULT_CLIP: float | None = 10.0
#: JSD mixture weight of the teacher (0.5 = symmetric JSD).
DEFAULT_BETA = 0.5
#: Teacher entries kept by :func:`topk_teacher`.
DEFAULT_TOPK = 64
#: fp32 elements per temporary block (2^23 floats = 32 MiB; about 9 temporaries live per block).
DEFAULT_BLOCK_ELEMS = 1 << 23

_KINDS = ("forward_kl", "reverse_kl", "jsd")


# ------------------------------------------------------------------------------------------------------- helpers


def _f32(block: Tensor, temperature: float) -> Tensor:
    """A fresh fp32 (fp64 for fp64 input) copy of ``block / temperature``."""
    x = block.to(torch.float64 if block.dtype == torch.float64 else torch.float32, copy=True)
    return x.div_(temperature) if temperature != 1.0 else x


def _check(student_logits: Tensor, teacher_shape: tuple[int, ...] | None, mask: Tensor, temperature: float,
           clip: float | None, agg: str) -> None:
    check_agg(agg)
    if student_logits.dim() != 3:
        raise ValueError(f"student logits must be (B, T, V); got {tuple(student_logits.shape)}")
    if teacher_shape is not None and tuple(teacher_shape) != tuple(student_logits.shape):
        raise ValueError(f"teacher logits {tuple(teacher_shape)} must match student logits "
                         f"{tuple(student_logits.shape)} (align them position by position first)")
    if tuple(mask.shape) != tuple(student_logits.shape[:2]):
        raise ValueError(f"mask must be (B, T) = {tuple(student_logits.shape[:2])}; got {tuple(mask.shape)}")
    if temperature <= 0:
        raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
    if clip is not None and clip <= 0:
        raise ConfigError(f"distillation clip must be > 0 or None (no clip), got {clip}")


def _xlogr(p: Tensor, logp: Tensor, logq: Tensor) -> Tensor:
    """``p · (logp − logq)`` with ``0 · anything = 0`` (so −inf logits give 0, not NaN)."""
    return torch.where(p > 0, p * (logp - logq), torch.zeros((), dtype=p.dtype, device=p.device))


def _entries(zs: Tensor, zt: Tensor, kind: str, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-entry terms ``e`` (..., V), plus ``p_S`` and ``p_S · ∂e/∂p_S`` (per entry, before the clip mask)."""
    ls = torch.log_softmax(zs, dim=-1)
    lt = torch.log_softmax(zt, dim=-1)
    ps, pt = ls.exp(), lt.exp()
    zero = torch.zeros((), dtype=ps.dtype, device=ps.device)
    if kind == "forward_kl":
        e = _xlogr(pt, lt, ls)
        pw = -pt  # p_S · (−p_T / p_S)
    elif kind == "reverse_kl":
        e = _xlogr(ps, ls, lt)
        pw = torch.where(ps > 0, ps * (ls - lt + 1.0), zero)
    else:  # jsd, 0 < beta < 1
        lm = torch.logaddexp(lt + math.log(beta), ls + math.log1p(-beta))
        e = beta * _xlogr(pt, lt, lm) + (1.0 - beta) * _xlogr(ps, ls, lm)
        pw = (1.0 - beta) * _xlogr(ps, ls, lm)  # ∂e_v/∂p_S(v) = (1 − β)·log(p_S/m)
    return e, ps, pw


class _Divergence(torch.autograd.Function):
    """Per-token clipped divergence (B, T), its unclipped value (B, T) and clipped-entry counts (B, T)."""

    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, keep: Tensor, kind: str, beta: float,  # type: ignore[override]
                clip: float | None, temperature: float, rows: int):
        b, t, _ = student.shape
        dt = torch.float64 if student.dtype == torch.float64 else torch.float32
        loss = torch.zeros((b, t), dtype=dt, device=student.device)
        raw = torch.zeros((b, t), dtype=dt, device=student.device)
        nclip = torch.zeros((b, t), dtype=dt, device=student.device)
        for bs, ts in _blocks(b, t, rows):
            k = keep[bs, ts]
            if not bool(k.any()):
                continue
            e, _, _ = _entries(_f32(student[bs, ts], temperature), _f32(teacher[bs, ts], temperature), kind, beta)
            r = e.sum(-1)
            if clip is not None:
                nclip[bs, ts] = torch.where(k, (e.abs() > clip).sum(-1).to(dt), 0.0)
                e = e.clamp(-clip, clip)
            loss[bs, ts] = torch.where(k, e.sum(-1), 0.0)
            raw[bs, ts] = torch.where(k, r, 0.0)
        ctx.save_for_backward(student, teacher, keep)
        ctx.args = (kind, beta, clip, temperature, rows)
        ctx.mark_non_differentiable(raw, nclip)
        return loss, raw, nclip

    @staticmethod
    def backward(ctx, g_loss: Tensor, _g_raw: Tensor, _g_nclip: Tensor):  # type: ignore[override]
        student, teacher, keep = ctx.saved_tensors
        kind, beta, clip, temperature, rows = ctx.args
        b, t, _ = student.shape
        grad = torch.zeros(student.shape, dtype=student.dtype, device=student.device)  # (B, T, V)
        for bs, ts in _blocks(b, t, rows):
            k = keep[bs, ts]
            if not bool(k.any()):
                continue
            e, ps, pw = _entries(_f32(student[bs, ts], temperature), _f32(teacher[bs, ts], temperature), kind, beta)
            if clip is not None:
                pw = torch.where(e.abs() <= clip, pw, 0.0)
            gz = pw - ps * pw.sum(-1, keepdim=True)  # (b', t', V)
            gz = gz * torch.where(k, g_loss[bs, ts].to(gz.dtype), 0.0).unsqueeze(-1)
            if temperature != 1.0:
                gz = gz / temperature
            grad[bs, ts] = torch.where(k.unsqueeze(-1), gz, 0.0).to(grad.dtype)
        return grad, None, None, None, None, None, None, None


def _finish(loss_tok: Tensor, raw: Tensor, nclip: Tensor, keep: Tensor, entries_per_token: int, agg: str,
            max_len: int | None, denom: float | Tensor | None) -> tuple[Tensor, dict[str, float]]:
    loss = masked_aggregate(loss_tok, keep, agg, max_len=max_len, denom=denom)
    with torch.no_grad():
        n = keep.sum()
        stats = torch.stack([
            loss.detach().to(raw.dtype),
            masked_mean(raw.detach(), keep),
            nclip.detach().sum() / (n.clamp(min=1) * entries_per_token),
            n.to(raw.dtype),
        ]).tolist()
    return loss, {"ofsd/loss": stats[0], "ofsd/kl": stats[1], "ofsd/clip_frac": stats[2], "ofsd/tokens": stats[3]}


def _divergence_loss(kind: str, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, *, clip: float | None,
                     temperature: float, beta: float, agg: str, max_len: int | None, denom: float | Tensor | None,
                     block_elems: int) -> tuple[Tensor, dict[str, float]]:
    _check(student_logits, tuple(teacher_logits.shape), mask, temperature, clip, agg)
    if kind == "jsd":
        if not 0.0 <= beta <= 1.0:
            raise ConfigError(f"JSD beta must be in [0, 1], got {beta}")
        kind = "forward_kl" if beta == 0.0 else "reverse_kl" if beta == 1.0 else "jsd"
    keep = mask != 0
    rows = max(1, block_elems // max(1, student_logits.shape[-1]))
    loss_tok, raw, nclip = _Divergence.apply(student_logits, teacher_logits.detach(), keep, kind, float(beta),
                                             None if clip is None else float(clip), float(temperature), rows)
    return _finish(loss_tok, raw, nclip, keep, student_logits.shape[-1], agg, max_len, denom)


# ------------------------------------------------------------------------------------------------ full-vocabulary


def forward_kl(
    student_logits: Tensor,  # (B, T, V) trainable
    teacher_logits: Tensor,  # (B, T, V) detached here
    mask: Tensor,  # (B, T) 1 = student policy token
    *,
    clip: float | None = DEFAULT_CLIP,
    temperature: float = 1.0,
    beta: float = DEFAULT_BETA,  # unused (uniform registry signature)
    agg: str = DEFAULT_AGG,
    max_len: int | None = None,
    denom: float | Tensor | None = None,
    block_elems: int = DEFAULT_BLOCK_ELEMS,
) -> tuple[Tensor, dict[str, float]]:
    """Forward KL(p_T ‖ p_S) per token with the point-wise clip, reduced by ``agg`` (the paper's OFSD loss)."""
    return _divergence_loss("forward_kl", student_logits, teacher_logits, mask, clip=clip, temperature=temperature,
                            beta=beta, agg=agg, max_len=max_len, denom=denom, block_elems=block_elems)


def reverse_kl(
    student_logits: Tensor,  # (B, T, V)
    teacher_logits: Tensor,  # (B, T, V)
    mask: Tensor,  # (B, T)
    *,
    clip: float | None = DEFAULT_CLIP,
    temperature: float = 1.0,
    beta: float = DEFAULT_BETA,  # unused (uniform registry signature)
    agg: str = DEFAULT_AGG,
    max_len: int | None = None,
    denom: float | Tensor | None = None,
    block_elems: int = DEFAULT_BLOCK_ELEMS,
) -> tuple[Tensor, dict[str, float]]:
    """Reverse KL(p_S ‖ p_T) per token with the point-wise clip, reduced by ``agg``."""
    return _divergence_loss("reverse_kl", student_logits, teacher_logits, mask, clip=clip, temperature=temperature,
                            beta=beta, agg=agg, max_len=max_len, denom=denom, block_elems=block_elems)


def jsd(
    student_logits: Tensor,  # (B, T, V)
    teacher_logits: Tensor,  # (B, T, V)
    mask: Tensor,  # (B, T)
    *,
    clip: float | None = DEFAULT_CLIP,
    temperature: float = 1.0,
    beta: float = DEFAULT_BETA,
    agg: str = DEFAULT_AGG,
    max_len: int | None = None,
    denom: float | Tensor | None = None,
    block_elems: int = DEFAULT_BLOCK_ELEMS,
) -> tuple[Tensor, dict[str, float]]:
    """Generalised JSD(β) = β·KL(p_T ‖ m) + (1 − β)·KL(p_S ‖ m), m = β·p_T + (1 − β)·p_S (module docstring)."""
    return _divergence_loss("jsd", student_logits, teacher_logits, mask, clip=clip, temperature=temperature,
                            beta=beta, agg=agg, max_len=max_len, denom=denom, block_elems=block_elems)


#: name -> ``fn(student_logits, teacher_logits, mask, *, clip, temperature, beta, agg, max_len, denom,
#: block_elems) -> (loss, metrics)``; ``beta`` is read by ``jsd`` only.
DISTILL_LOSSES: dict[str, DistillLossFn] = {"forward_kl": forward_kl, "reverse_kl": reverse_kl, "jsd": jsd}


def get_distill_loss(name: str = DEFAULT_DISTILL_LOSS) -> DistillLossFn:
    """The distillation loss registered as ``name``; an unknown name fails listing the valid ones."""
    try:
        return DISTILL_LOSSES[name]
    except KeyError:
        valid = ", ".join(sorted(DISTILL_LOSSES))
        raise ConfigError(f"unknown distillation loss '{name}' (fix: use one of: {valid})") from None


# ----------------------------------------------------------------------------------------------------- top-k + tail


@torch.no_grad()
def topk_teacher(
    teacher_logits: Tensor,  # (B, T, V)
    k: int = DEFAULT_TOPK,
    *,
    temperature: float = 1.0,
    block_elems: int = DEFAULT_BLOCK_ELEMS,
) -> tuple[Tensor, Tensor, Tensor]:  # idx (B, T, k) int64, logp (B, T, k) fp32, tail_logp (B, T) fp32
    """The teacher's ``k`` most likely ids per position, their log-probs, and the log of the remaining mass.

    ``tail_logp = log(1 − Σ top-k p_T)`` is computed as ``logsumexp`` over the other logits minus the full
    ``logsumexp`` (no cancellation when the top-k mass is close to 1); it is ``−inf`` when ``k = V``. Store ``idx``
    as int32 if you like: :func:`forward_kl_topk` accepts any integer dtype.
    """
    if teacher_logits.dim() != 3:
        raise ValueError(f"teacher logits must be (B, T, V); got {tuple(teacher_logits.shape)}")
    b, t, v = teacher_logits.shape
    if not 1 <= k <= v:
        raise ConfigError(f"top-k teacher needs 1 <= k <= vocabulary size {v}, got k={k}")
    if temperature <= 0:
        raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
    dt = torch.float64 if teacher_logits.dtype == torch.float64 else torch.float32
    idx = torch.empty((b, t, k), dtype=torch.long, device=teacher_logits.device)
    logp = torch.empty((b, t, k), dtype=dt, device=teacher_logits.device)
    tail = torch.empty((b, t), dtype=dt, device=teacher_logits.device)
    for bs, ts in _blocks(b, t, max(1, block_elems // v)):
        z = _f32(teacher_logits[bs, ts], temperature)  # (b', t', V)
        lse = torch.logsumexp(z, dim=-1)  # (b', t')
        vals, ids = z.topk(k, dim=-1)
        idx[bs, ts] = ids
        logp[bs, ts] = vals - lse.unsqueeze(-1)
        z.scatter_(-1, ids, float("-inf"))
        tail[bs, ts] = torch.logsumexp(z, dim=-1) - lse
    return idx, logp, tail


class _TopkLogq(torch.autograd.Function):
    """Student log-probs collapsed onto ``k`` ids + a tail bucket: (B, T, k + 1), computed block by block."""

    @staticmethod
    def forward(ctx, student: Tensor, idx: Tensor, keep: Tensor,  # type: ignore[override]
                temperature: float, rows: int):
        b, t, _ = student.shape
        k = idx.shape[-1]
        dt = torch.float64 if student.dtype == torch.float64 else torch.float32
        out = torch.zeros((b, t, k + 1), dtype=dt, device=student.device)
        lse = torch.zeros((b, t), dtype=dt, device=student.device)
        lse_tail = torch.full((b, t), float("-inf"), dtype=dt, device=student.device)
        for bs, ts in _blocks(b, t, rows):
            if not bool(keep[bs, ts].any()):
                continue
            z = _f32(student[bs, ts], temperature)
            full = torch.logsumexp(z, dim=-1)
            ids = idx[bs, ts]
            out[bs, ts, :k] = z.gather(-1, ids) - full.unsqueeze(-1)
            z.scatter_(-1, ids, float("-inf"))
            tl = torch.logsumexp(z, dim=-1)
            out[bs, ts, k] = tl - full
            lse[bs, ts], lse_tail[bs, ts] = full, tl
        ctx.save_for_backward(student, idx, keep, lse, lse_tail)
        ctx.args = (temperature, rows)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        student, idx, keep, lse, lse_tail = ctx.saved_tensors
        temperature, rows = ctx.args
        b, t, _ = student.shape
        k = idx.shape[-1]
        grad = torch.zeros(student.shape, dtype=student.dtype, device=student.device)
        for bs, ts in _blocks(b, t, rows):
            kb = keep[bs, ts]
            if not bool(kb.any()):
                continue
            z = _f32(student[bs, ts], temperature)
            ids = idx[bs, ts]
            gb = torch.where(kb.unsqueeze(-1), g[bs, ts].to(z.dtype), 0.0)  # (b', t', k + 1)
            p = (z - lse[bs, ts].unsqueeze(-1)).exp()  # student softmax
            comp = torch.ones_like(z, dtype=torch.bool).scatter_(-1, ids, False)  # outside the top-k
            has_tail = torch.isfinite(lse_tail[bs, ts]).unsqueeze(-1)
            q_tail = torch.where(comp & has_tail, (z - lse_tail[bs, ts].unsqueeze(-1)).exp(), 0.0)
            # d log p(id_i)/dz = onehot(id_i) − p;  d log P_tail/dz = q_tail − p  (q_tail = p restricted to the tail)
            gz = q_tail * gb[..., k:] - p * gb.sum(-1, keepdim=True)
            gz.scatter_add_(-1, ids, gb[..., :k])
            if temperature != 1.0:
                gz = gz / temperature
            grad[bs, ts] = gz.to(grad.dtype)
        return grad, None, None, None, None


def forward_kl_topk(
    student_logits: Tensor,  # (B, T, V) trainable
    idx: Tensor,  # (B, T, k) teacher top-k ids (any integer dtype)
    logp: Tensor,  # (B, T, k) teacher log-probs at idx
    tail_logp: Tensor,  # (B, T) log(1 − Σ top-k p_T)
    mask: Tensor,  # (B, T)
    *,
    clip: float | None = DEFAULT_CLIP,
    temperature: float = 1.0,
    agg: str = DEFAULT_AGG,
    max_len: int | None = None,
    denom: float | Tensor | None = None,
    block_elems: int = DEFAULT_BLOCK_ELEMS,
) -> tuple[Tensor, dict[str, float]]:
    """Forward KL over ``k + 1`` buckets (the teacher's top-k ids and one tail bucket), with the point-wise clip.

    A lower bound of :func:`forward_kl` without clip (module docstring); ``temperature`` must be the one the teacher
    targets were made with by :func:`topk_teacher`.
    """
    _check(student_logits, None, mask, temperature, clip, agg)
    b, t, _ = student_logits.shape
    if idx.dim() != 3 or tuple(idx.shape[:2]) != (b, t) or logp.shape != idx.shape or tuple(tail_logp.shape) != (b, t):
        raise ValueError(f"expected idx and logp (B, T, k) and tail_logp (B, T) with (B, T) = {(b, t)}; got "
                         f"{tuple(idx.shape)}, {tuple(logp.shape)}, {tuple(tail_logp.shape)}")
    keep = mask != 0
    rows = max(1, block_elems // max(1, student_logits.shape[-1]))
    logq = _TopkLogq.apply(student_logits, idx.long(), keep, float(temperature), rows)  # (B, T, k + 1)
    lt = torch.cat([logp.detach(), tail_logp.detach().unsqueeze(-1)], dim=-1).to(logq.dtype)  # (B, T, k + 1)
    pt = lt.exp()
    zero = torch.zeros((), dtype=lt.dtype, device=lt.device)
    e = torch.where(pt > 0, pt * (torch.where(pt > 0, lt, zero) - logq), zero)  # (B, T, k + 1)
    raw = e.detach().sum(-1)
    if clip is not None:
        nclip = torch.where(keep, (e.detach().abs() > clip).sum(-1).to(e.dtype), zero)
        e = e.clamp(-clip, clip)
    else:
        nclip = torch.zeros_like(raw)
    loss_tok = e.sum(-1)  # (B, T)
    return _finish(loss_tok, torch.where(keep, raw, zero), nclip, keep, idx.shape[-1] + 1, agg, max_len, denom)
