"""The OFSD phase (DESIGN §1): freeze the policy as a teacher, re-sample, mine pairs, distil from a privileged context.

    θ_r frozen as teacher → K rollouts per sampled training question → rewards → pair mining → teacher targets
    (teacher on privileged prompt + τ_stu) → student (the policy itself, on the plain prompt + τ_stu) trained for
    ``epochs`` passes with the distillation loss on τ_stu's policy tokens → metrics

:func:`run_ofsd_phase` is the whole phase as one flat function; its parts (:class:`FrozenTeacher`,
:func:`prepare_pairs`, :func:`precompute_topk`, :func:`distill_loss`, :func:`distill`) are usable on their own.

Choices and departures from the paper (all options of :class:`OFSDConfig` unless stated):

* **Questions.** ``questions`` training questions are drawn (seeded) per phase; the paper re-samples every training
  question. A small or weak policy may answer none of a small draw right, leaving no pair and a phase that changes
  nothing; ``min_pairs`` (default 0 = off) then samples further batches of new questions until the pairs suffice or
  ``max_questions`` are drawn (:func:`searche1.ofsd.sampling.sample_groups`).
* **Teacher.** A deep copy of the policy (eval mode, ``requires_grad`` off): costs one more copy of the weights.
  The paper trains a LoRA adapter and uses "adapter off" as the teacher. For a peft model whose LoRA adapter is
  still fresh (every ``lora_B`` is zero, so adapter-off *is* θ_r) the teacher is the same model run inside
  ``model.disable_adapter()``, with no copy. A peft model whose adapter is already trained (e.g. LoRA-GRPO) is deep
  copied instead: adapter-off would be the base model, not θ_r. The teacher is **frozen** (no live-teacher option).
* **Teacher targets.** ``teacher_mode = "exact"``: the teacher's full logits are computed on the fly in every
  micro-batch (no grad), nothing is stored. ``"topk"``: the teacher runs once over all pairs before training and its
  top-k + tail distribution at the student's policy tokens is written to ``work_dir/teacher/`` (sharded safetensors,
  atomic; :mod:`searche1.ofsd.teacher`); the teacher copy is then freed and training reads the shards back. The top-k
  loss is an approximation of *forward* KL only (``loss`` must be ``forward_kl``).
* **Alignment.** Teacher and student score the same response tokens (the student trajectory's ``response_ids``)
  after different prompts. Sequences are **left-padded** (with position ids that skip the pads, as in the rollout
  engine): position ``m`` of the ``(B, R_max)`` response block of row ``b`` predicts response token ``j = m − (R_max
  − R_b)``, for the student and the teacher alike, because the layout depends only on the response lengths. This is
  the same alignment as "logits at ``len(prompt) + j − 1``" (``TeacherSequence.offset`` = teacher − student prompt
  length, checked). Only policy-mask-1 response tokens count (never ``<information>``), so logits (and their
  vocabulary-wide divergence) are computed only at the block's positions where some row of the micro-batch has one
  (``logits_to_keep`` as an index tensor; the same loss and gradients): never for the (long, privileged) prompts,
  nor for the retrieved passages (~6 in 7 response tokens in the CPU demo). With ``share_prompt`` (default) the
  prompt prefix a micro-batch's sequences share (the instructions; the whole prompts for two pairs of one question)
  runs once and the rows continue on its KV cache (:func:`response_logits`; the same loss and gradients; TRL and
  veRL run every sequence whole). Each step's pairs are then cut into micro-batches in the order of their teacher
  prompts, so the pairs of one question (``student: all_others``) share a micro-batch: the step's gradient is the
  same sum. Pairs with no policy token are dropped, pairs whose teacher sequence
  exceeds ``max_teacher_tokens`` are skipped (both counted).
* **Optimisation.** A fresh AdamW (constant ``lr``, no warm-up; the GRPO optimizer state is untouched). Each epoch
  visits the pairs in a seeded order that goes shard by shard (shards shuffled, pairs shuffled inside a shard; the
  same order in exact mode, for identical runs), and takes **one optimizer step per ``pairs_per_step`` pairs**
  (the last step of an epoch may hold fewer), accumulated over micro-batches of ``micro_batch_size`` with the exact
  whole-step normaliser (``denom`` = the step's policy-token count: token-mean over the step, as in
  ``L = mean_t Σ_v …``), then gradient clipping; a non-finite loss or gradient skips the step.
* **Data parallelism** (``dist``, :mod:`searche1.distributed`; launched like ``searche1 train``): each rank
  re-samples a contiguous share of the sampled questions (per-episode generators keyed by the global episode index,
  so the rollouts do not depend on the number of ranks), the groups are gathered so every rank mines the same pair
  pool and walks the same epoch order, and pair ``j`` is owned by rank ``j mod world``: the owner computes its
  teacher targets (exact logits, or its own top-k cache ``teacher-rank{r}/``) and its student forward/backward.
  Every step uses the whole step's token count as normaliser and sums the gradients over ranks with one all-reduce
  before clipping, so N ranks take the single-process steps (tested with 2 gloo processes against one). With
  ``sharding: full`` the caller's ``before_training`` shards the policy with FSDP after the teacher copy (the
  pipeline samples from an unsharded copy); each step every rank runs as many forward/backward passes as the rank
  with the most micro-batches (idle zero-loss passes on one pad token), with no shared prompt prefixes, and FSDP's
  reduce-scatter sums the gradients (the loss is scaled by the world size against its averaging).
* **Metrics.** ``ofsd/kl_first`` / ``ofsd/kl_last`` are the token-weighted means of the unclipped per-token
  divergence over the first and last epoch, measured on the fly (each step's value is taken before its update);
  ``ofsd/kl`` = ``ofsd/kl_last``. Without pairs the KL keys are absent and the model is untouched.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from searche1.algos.distill import forward_kl_topk, get_distill_loss, topk_teacher
from searche1.distributed import Dist, make_adamw, optimizer_state_bytes
from searche1.errors import ConfigError
from searche1.ofsd.config import OFSDConfig
from searche1.ofsd.contexts import ContextFn, student_sequence, teacher_sequence
from searche1.ofsd.pairs import Pair, mine_pairs
from searche1.ofsd.sampling import EpisodeReward, sample_groups
from searche1.ofsd.teacher import TeacherShards, bytes_per_token, write_teacher_shards
from searche1.rollout.types import RolloutConfig
from searche1.scoring import accepts_logits_to_keep, cache_kwarg, can_share_prefix, kept_columns, shared_prefix_len

log = logging.getLogger(__name__)

__all__ = [
    "FrozenTeacher",
    "OFSDConfig",
    "PairItem",
    "distill",
    "distill_loss",
    "epoch_order",
    "precompute_topk",
    "prepare_pairs",
    "response_logits",
    "response_mask",
    "run_ofsd_phase",
    "sample_groups",
    "shared_prompt_len",
    "step_micro_batches",
]



# ------------------------------------------------------------------------------------------------------- sequences


@dataclass
class PairItem:
    """One pair's token sequences, ready for the forward passes."""

    pair: Pair
    student_ids: list[int]  # plain prompt + τ_stu response
    teacher_ids: list[int]  # privileged prompt + τ_stu response
    response_mask: list[int]  # (R,) 1 at τ_stu's policy tokens

    @property
    def response_len(self) -> int:
        return len(self.response_mask)

    @property
    def tokens(self) -> int:
        return sum(self.response_mask)


def prepare_pairs(pairs: Sequence[Pair], tokenizer: Any, *, context: str | ContextFn = "sibling",
                  chat: bool | None = None, max_searches: int | None = 4, show_information: bool = True,
                  show_answer: bool = True, max_teacher_tokens: int | None = None) -> tuple[list[PairItem], dict]:
    """Student and teacher sequences per pair; pairs without policy tokens or with a too-long teacher are dropped."""
    items: list[PairItem] = []
    too_long = empty = 0
    for p in pairs:
        s_ids, s_mask = student_sequence(p)
        ts = teacher_sequence(p, tokenizer, context, chat=chat, max_searches=max_searches,
                              show_information=show_information, show_answer=show_answer)
        R, P_s = len(p.student.response_ids), len(p.student.prompt_ids)
        if len(ts.ids) - R != P_s + ts.offset or ts.mask[len(ts.ids) - R:] != s_mask[P_s:]:
            raise AssertionError("teacher and student sequences are misaligned")  # contexts.py contract
        if sum(s_mask) == 0:
            empty += 1
            continue
        if max_teacher_tokens is not None and len(ts.ids) > max_teacher_tokens:
            too_long += 1
            continue
        items.append(PairItem(p, s_ids, list(ts.ids), s_mask[P_s:]))
    return items, {"ofsd/skipped_too_long": float(too_long), "ofsd/skipped_no_tokens": float(empty)}


def shared_prompt_len(seqs: Sequence[Sequence[int]], resp_lens: Sequence[int]) -> int:
    """The prefix the prompts of ``seqs`` (each sequence less its last ``resp_lens[b]`` tokens) share, one token
    short of the shortest prompt (:func:`searche1.scoring.shared_prefix_len`): the ``prefix`` to pass
    :func:`response_logits`; 0 when not worth running apart."""
    return shared_prefix_len([s[:len(s) - r] for s, r in zip(seqs, resp_lens)])


def response_logits(model: Any, seqs: Sequence[Sequence[int]], resp_lens: Sequence[int], pad_id: int,
                    device: Any, cols: Tensor | None = None,
                    prefix: int = 0) -> Tensor:  # (B, R_max, V), or (B, K, V) with cols
    """Logits that predict the last ``resp_lens[b]`` tokens of each sequence, right-aligned (module docstring).

    Row ``b``, position ``m`` predicts response token ``m − (R_max − resp_lens[b])``; earlier positions are filler.
    ``cols`` (K,): only those positions ``m`` (sorted), the LM head run at them alone (``logits_to_keep`` as an
    index tensor; a model without it gets full logits, then the columns).

    ``prefix`` > 0 (:func:`shared_prompt_len`; a model that takes a KV cache and ``logits_to_keep``, and no
    gradient checkpointing when run with gradients: :func:`searche1.scoring.can_share_prefix`): the
    first ``prefix`` tokens, the same in every row, run once (batch 1) and the rows continue on their repeated KV
    cache. The layout is then ``[prefix | pads | rest]`` (the pads move after the shared prefix, position ids still
    skip them, the response stays right-aligned), so the logits are the same as without, and so are the gradients
    (the prefix's is summed over the rows through the cache), as in :func:`searche1.scoring.masked_logprobs`.
    """
    B, T, R = len(seqs), max(len(s) for s in seqs), max(resp_lens)
    if any(len(s) <= r for s, r in zip(seqs, resp_lens)):
        raise ValueError("every sequence needs at least one prompt token before its response")
    if prefix and (prefix >= min(len(s) - r for s, r in zip(seqs, resp_lens))
                   or any(list(s[:prefix]) != list(seqs[0][:prefix]) for s in seqs)):
        raise ValueError(f"prefix {prefix}: not a prefix every prompt shares with a token after it "
                         "(use shared_prompt_len)")
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :prefix] = torch.tensor(list(s[:prefix]), dtype=torch.long)
        ids[b, T - len(s) + prefix:] = torch.tensor(list(s[prefix:]), dtype=torch.long)
        attn[b, :prefix] = 1
        attn[b, T - len(s) + prefix:] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    at = torch.arange(T - R - 1, T - 1) if cols is None else T - R - 1 + cols.cpu()  # sequence positions wanted
    if prefix:
        from transformers import DynamicCache

        kv = {cache_kwarg(model): DynamicCache()}
        model(input_ids=ids[:1, :prefix].to(device), attention_mask=attn[:1, :prefix].to(device),
              position_ids=pos[:1, :prefix].to(device), use_cache=True, logits_to_keep=1, **kv)
        next(iter(kv.values())).batch_repeat_interleave(B)
        return model(input_ids=ids[:, prefix:].to(device), attention_mask=attn.to(device),
                     position_ids=pos[:, prefix:].to(device), use_cache=True, logits_to_keep=(at - prefix).to(device),
                     **kv).logits
    keep = accepts_logits_to_keep(model)
    out = model(input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=pos.to(device),
                use_cache=False, **({"logits_to_keep": at.to(device)} if keep else {})).logits
    return out if keep else out[:, at.to(out.device)]


def response_mask(items: Sequence[PairItem]) -> Tensor:  # (B, R_max) in the layout of :func:`response_logits`
    R = max(it.response_len for it in items)
    mask = torch.zeros((len(items), R))
    for b, it in enumerate(items):
        mask[b, R - it.response_len:] = torch.tensor(it.response_mask, dtype=torch.float)
    return mask


class FrozenTeacher:
    """θ_r frozen: a deep copy in eval mode (in ``dtype`` if given: bf16 under autocast, half the memory of the fp32
    trained weights), or the peft model itself with a fresh adapter disabled (module doc). ``source``: a model that
    holds θ_r and is not trained (the HF sampler's copy), used as the teacher without a copy when its dtype is the
    one wanted."""

    def __init__(self, model: Any, dtype: Any = None, source: Any = None) -> None:
        self.adapter_off = _is_peft(model) and _adapter_is_fresh(model)
        want = dtype if dtype is not None else next(model.parameters()).dtype
        if self.adapter_off:
            self.model = model
        elif source is not None and not _is_peft(model) and next(source.parameters()).dtype == want:
            self.model = source  # an untrained copy of θ_r in the wanted dtype already (the sampler's): no new copy
            self.model.eval().requires_grad_(False)
        else:
            self.model = copy.deepcopy(model).to(dtype) if dtype is not None else copy.deepcopy(model)
            self.model.eval().requires_grad_(False)
            for p in self.model.parameters():
                p.grad = None

    @torch.no_grad()
    def response_logits(self, items: Sequence[PairItem], pad_id: int, device: Any, autocast: bool,
                        cols: Tensor | None = None, share: bool = False) -> Tensor:
        """:func:`response_logits` of the teacher sequences; ``share``: their shared prompt prefix runs once (also
        under gradient checkpointing, which keeps the KV cache without gradients)."""
        seqs, lens = [it.teacher_ids for it in items], [it.response_len for it in items]
        prefix = shared_prompt_len(seqs, lens) if share and accepts_logits_to_keep(self.model) else 0
        was = self.model.training
        ctx = self.model.disable_adapter() if self.adapter_off else nullcontext()
        try:
            self.model.eval()
            with ctx, torch.autocast(device_type=str(device).split(":")[0], dtype=torch.bfloat16, enabled=autocast):
                return response_logits(self.model, seqs, lens, pad_id, device, cols, prefix=prefix)
        finally:
            self.model.train(was)


def _is_peft(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def _adapter_is_fresh(model: Any) -> bool:
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    return bool(lora_b) and all(not bool(p.detach().any()) for p in lora_b)


# ------------------------------------------------------------------------------------------------------ training


def epoch_order(n: int, pairs_per_shard: int, rng: random.Random) -> list[int]:
    """Pair order for one epoch: shards of ``pairs_per_shard`` consecutive pairs in shuffled order, each shuffled."""
    shards = [list(range(s, min(n, s + pairs_per_shard))) for s in range(0, n, pairs_per_shard)]
    rng.shuffle(shards)
    out: list[int] = []
    for sh in shards:
        rng.shuffle(sh)
        out.extend(sh)
    return out


def step_micro_batches(items: Sequence[PairItem], ids: Sequence[int], micro: int, share: bool) -> list[list[int]]:
    """A step's pairs (indices into ``items``) in micro-batches of ``micro``; with ``share``, in the order of their
    teacher prompts, so the pairs of one question sit side by side and run their whole prompts once."""
    if share:
        ids = sorted(ids, key=lambda j: items[j].teacher_ids[:len(items[j].teacher_ids) - items[j].response_len])
    return [list(ids[m:m + micro]) for m in range(0, len(ids), micro)]


def _topk_targets(shards: TeacherShards, pair_ids: Sequence[int], items: Sequence[PairItem],
                  mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cached targets laid out like ``mask`` (B, R): idx (B, R, k), logp (B, R, k), tail (B, R)."""
    B, R = mask.shape
    k = shards.k
    idx = torch.zeros((B, R, k), dtype=torch.long)
    logp = torch.full((B, R, k), float("-inf"))  # zero teacher mass at masked positions
    tail = torch.zeros((B, R))
    rows = [shards.get(j) for j in pair_ids]
    for j, it, r in zip(pair_ids, items, rows):
        if r[0].shape[0] != it.tokens:
            raise ValueError(f"teacher cache pair {j} holds {r[0].shape[0]} tokens but the pair has {it.tokens} "
                             "(stale cache: rerun the teacher pass)")
    keep = mask != 0
    idx[keep] = torch.cat([r[0] for r in rows])
    logp[keep] = torch.cat([r[1] for r in rows])
    tail[keep] = torch.cat([r[2] for r in rows])
    return idx, logp, tail


def distill_loss(model: Any, items: Sequence[PairItem], cfg: OFSDConfig, *, pad_id: int,
                 teacher: FrozenTeacher | None = None, shards: TeacherShards | None = None,
                 pair_ids: Sequence[int] | None = None, denom: float | None = None,
                 autocast: bool = False, timer: dict | None = None) -> tuple[Tensor, dict[str, float]]:
    """The distillation loss of one micro-batch (student forward with grad; teacher exact or from ``shards``)."""
    device = next(model.parameters()).device
    full_mask = response_mask(items)  # (B, R)
    cols = kept_columns(full_mask)  # (K,) response positions where some row has a policy token
    mask = full_mask[:, cols].to(device)  # (B, K)
    if shards is None and teacher is None:
        raise ValueError("distill_loss needs a teacher (exact mode) or teacher shards (topk mode)")
    if shards is None:
        t0 = time.perf_counter()
        t_logits = teacher.response_logits(items, pad_id, device, autocast, cols, cfg.share_prompt)  # no grad
        if timer is not None:
            timer["teacher"] = timer.get("teacher", 0.0) + time.perf_counter() - t0
    seqs, lens = [it.student_ids for it in items], [it.response_len for it in items]
    prefix = shared_prompt_len(seqs, lens) if cfg.share_prompt and can_share_prefix(model) else 0
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
        s_logits = response_logits(model, seqs, lens, pad_id, device, cols, prefix=prefix)  # (B, K, V)
    if shards is None:
        return get_distill_loss(cfg.loss)(s_logits, t_logits, mask, clip=cfg.clip, beta=cfg.jsd_beta, denom=denom)
    if pair_ids is None:
        raise ValueError("topk mode needs the pairs' indices into the teacher cache (pair_ids)")
    idx, logp, tail = (x[:, cols].to(device) for x in _topk_targets(shards, pair_ids, items, full_mask))
    return forward_kl_topk(s_logits, idx, logp, tail, mask, clip=cfg.clip, temperature=shards.temperature,
                           denom=denom)


def precompute_topk(teacher: FrozenTeacher, items: Sequence[PairItem], path: str | Path, cfg: OFSDConfig, *,
                    pad_id: int, autocast: bool = False) -> TeacherShards:
    """Run the teacher once over every pair and write its top-k targets to ``path`` (atomic shards)."""
    device = next(teacher.model.parameters()).device

    def records():
        for s in range(0, len(items), cfg.micro_batch_size):
            batch = items[s:s + cfg.micro_batch_size]
            full_mask = response_mask(batch)  # (B, R)
            cols = kept_columns(full_mask)
            mask = full_mask[:, cols].to(device) != 0  # (B, K): the policy tokens, in order
            logits = teacher.response_logits(batch, pad_id, device, autocast, cols, cfg.share_prompt)  # (B, K, V)
            idx, logp, tail = topk_teacher(logits, cfg.topk)
            for b in range(len(batch)):
                m = mask[b]
                yield idx[b][m], logp[b][m], tail[b][m]

    write_teacher_shards(path, records(), k=cfg.topk, pairs_per_shard=cfg.pairs_per_shard,
                         meta={"loss": cfg.loss, "context": cfg.context})
    return TeacherShards(path)


def distill(model: Any, items: Sequence[PairItem], cfg: OFSDConfig, *, pad_id: int,
            teacher: FrozenTeacher | None = None, shards: TeacherShards | None = None, seed: int = 0,
            progress: bool = False, autocast: bool | None = None, dist: Dist | None = None) -> dict[str, float]:
    """Train ``model`` on ``items`` for ``cfg.epochs`` passes (module docstring); returns the training metrics.

    With ``dist``, ``items`` is the whole pool (the same on every rank); this rank computes the pairs it owns
    (``j mod world``) and ``shards`` holds only those (local index ``j // world``)."""
    from tqdm.auto import tqdm

    from searche1.sharding import full_tensor, is_sharded
    from searche1.train import use_bf16

    device = next(model.parameters()).device
    if autocast is None:
        autocast = use_bf16(cfg.bf16, str(device))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("OFSD phase: the model has no trainable parameters")
    d = dist or Dist()
    full = is_sharded(model)  # FSDP: every rank runs as many forwards as the busiest one, no shared prefixes
    if full:
        cfg = replace(cfg, share_prompt=False)
    opt = make_adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay, dist=d, shard=cfg.sharding == "optimizer")
    n_steps = math.ceil(len(items) / cfg.pairs_per_step)
    bar = tqdm(total=cfg.epochs * n_steps, desc="ofsd", disable=not progress or not d.is_main, unit="step")
    timer: dict[str, float] = {}
    kl_epochs: list[float] = []
    clip_sum = tok_total = loss_last = grad_sum = 0.0
    steps = skipped = 0
    model.train()
    for epoch in range(cfg.epochs):
        order = epoch_order(len(items), cfg.pairs_per_shard, random.Random(seed * 1_000_003 + epoch))
        kl_sum = kl_tok = loss_sum = 0.0
        epoch_steps = 0
        for s in range(0, len(order), cfg.pairs_per_step):
            step_ids = order[s:s + cfg.pairs_per_step]
            denom = float(max(1, sum(items[j].tokens for j in step_ids)))  # exact whole-step normaliser
            opt.zero_grad(set_to_none=True)
            mine = [j for j in step_ids if j % d.world == d.rank]  # all of them on one process
            part = [0.0, 0.0, 0.0, 0.0]  # loss, kl·tokens, clip·tokens, tokens
            micros = step_micro_batches(items, mine, cfg.micro_batch_size, cfg.share_prompt)
            for ids in micros:
                loss, m = distill_loss(model, [items[j] for j in ids], cfg, pad_id=pad_id, teacher=teacher,
                                       shards=shards, pair_ids=[j // d.world for j in ids], denom=denom,
                                       autocast=autocast, timer=timer)
                (loss * d.world if full else loss).backward()  # FSDP averages gradients over ranks: undo it
                part[0] += float(loss.detach())
                part[1] += m["ofsd/kl"] * m["ofsd/tokens"]
                part[2] += m["ofsd/clip_frac"] * m["ofsd/tokens"]
                part[3] += m["ofsd/tokens"]
            if full:  # lockstep: as many forward/backward passes as the rank with the most micro-batches
                busiest = max(len(step_micro_batches(items, [j for j in step_ids if j % d.world == r],
                                                     cfg.micro_batch_size, False)) for r in range(d.world))
                for _ in range(busiest - len(micros)):
                    _idle_pass(model, pad_id, device)
            else:  # FSDP reduce-scatters (sums) the gradients itself
                d.all_reduce_grads(params)
            total, *rest = d.sum_all(part)
            st = dict(zip(("kl", "clip", "tok"), rest))
            if (d.is_main or full) and os.environ.get("SEARCHE1_GRAD_DUMP"):  # tests: the step's full gradient
                from searche1.train import _dump_grads

                _dump_grads(model, Path(os.environ["SEARCHE1_GRAD_DUMP"]) / f"ofsd-step-{steps + skipped + 1}"
                                                                            ".safetensors", d)
            grad_norm = float(full_tensor(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)))
            bar.update(1)
            if not (math.isfinite(total) and math.isfinite(grad_norm)):
                opt.zero_grad(set_to_none=True)
                skipped += 1
                log.warning("OFSD epoch %d: non-finite loss/gradient (loss %s, grad norm %s): step skipped",
                            epoch + 1, total, grad_norm)
                continue
            opt.step()
            steps += 1
            epoch_steps += 1
            grad_sum += grad_norm
            kl_sum += st["kl"]
            kl_tok += st["tok"]
            clip_sum += st["clip"]
            tok_total += st["tok"]
            loss_sum += total
            bar.set_postfix(kl=f"{st['kl'] / max(st['tok'], 1):.4f}")
        opt.zero_grad(set_to_none=True)
        kl_epochs.append(kl_sum / kl_tok if kl_tok else float("nan"))
        loss_last = loss_sum / max(1, epoch_steps)
        log.info("OFSD epoch %d/%d: kl %.5f", epoch + 1, cfg.epochs, kl_epochs[-1])
    bar.close()
    return {
        "ofsd/kl_first": kl_epochs[0],
        "ofsd/kl_last": kl_epochs[-1],
        "ofsd/kl": kl_epochs[-1],
        "ofsd/loss": loss_last,
        "ofsd/clip_frac": clip_sum / tok_total if tok_total else 0.0,
        "ofsd/grad_norm": grad_sum / max(1, steps),
        "ofsd/steps": float(steps),
        "ofsd/skipped_nonfinite": float(skipped),
        "ofsd/train_tokens": tok_total,
        "mem/optimizer_state_mb": optimizer_state_bytes(opt) / 2**20,  # this rank's (its shard under ZeRO / FSDP)
        "time/ofsd_teacher_s": timer.get("teacher", 0.0),  # teacher forwards inside the loop (exact mode)
    }


def _idle_pass(model: Any, pad_id: int, device: Any) -> None:
    """A forward and backward pass with zero loss on one pad token: under FSDP a rank with fewer micro-batches than
    the busiest one joins its weight gathers and gradient reductions, adding nothing."""
    ids = torch.full((1, 1), pad_id, dtype=torch.long, device=device)
    (model(input_ids=ids).logits.float().sum() * 0.0).backward()


# -------------------------------------------------------------------------------------------------------- phase


def run_ofsd_phase(model: Any, tokenizer: Any, retriever: Any, questions: Sequence[Any], cfg: OFSDConfig,
                   rollout_cfg: RolloutConfig, work_dir: str | Path, *, seed: int = 0, progress: bool = True,
                   episode_reward: EpisodeReward | None = None,
                   context: str | ContextFn | None = None, dist: Dist | None = None,
                   engine: Any = None, before_training: Any = None,
                   teacher_source: Any = None) -> dict[str, float]:
    """One OFSD phase on ``model`` (trained in place); returns the phase's metrics (module docstring).

    ``questions`` are :class:`searche1.data.types.QAExample`; ``rollout_cfg`` is the GRPO rollout configuration
    (temperature, chat, max_searches are reused for sampling and for the teacher prompt). ``work_dir`` receives the
    top-k teacher cache (``teacher/``) in topk mode. ``episode_reward`` replaces the registered reward ``cfg.reward``;
    ``context`` (a registered name or a ``ContextFn``) replaces ``cfg.context``. ``dist`` runs the phase
    data-parallel (module docstring): call it on every rank with the same arguments. ``engine`` samples the groups
    instead of an HF engine on ``model`` (it must hold ``model``'s weights: the pipeline pushes them first).
    ``before_training(model)`` runs after the teacher is copied and before the first update (the pipeline shards
    the model with FSDP there: ``ofsd.sharding: full``); only when there are pairs to train on. ``teacher_source``:
    an unsharded copy of ``model``'s weights that nothing trains during the phase (the HF sampler's copy, synced
    before sampling): the teacher uses it instead of a copy of its own when the dtypes agree (:class:`FrozenTeacher`).
    """
    cfg.validate()
    t0 = time.perf_counter()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    d = dist or Dist()
    groups, roll_stats = sample_groups(model, tokenizer, retriever, questions, cfg, rollout_cfg, seed=seed,
                                       episode_reward=episode_reward, dist=d, engine=engine, progress=progress)
    pairs, pair_stats = mine_pairs(groups, student=cfg.student, reference=cfg.reference,  # type: ignore[arg-type]
                                   correct_threshold=cfg.correct_threshold)
    t_roll = time.perf_counter() - t0
    t1 = time.perf_counter()
    items, prep_stats = prepare_pairs(pairs, tokenizer, context=context if context is not None else cfg.context,
                                      chat=rollout_cfg.chat, max_searches=rollout_cfg.max_searches,
                                      show_information=cfg.show_information, show_answer=cfg.show_answer,
                                      max_teacher_tokens=cfg.max_teacher_tokens)
    metrics: dict[str, float] = {**roll_stats, **pair_stats, **prep_stats, "ofsd/pairs_trained": float(len(items)),
                                 "ofsd/skipped_nonfinite": 0.0, "ofsd/steps": 0.0}
    from searche1.train import use_bf16

    device = next(model.parameters()).device
    autocast = use_bf16(cfg.bf16, str(device))
    shards = None
    # θ_r (not yet updated): the sampler's copy, or a copy of the policy
    teacher = FrozenTeacher(model, torch.bfloat16 if autocast else None, teacher_source) if items else None
    if cfg.teacher_mode == "topk" and teacher is not None:
        mine = items[d.rank::d.world]  # the pairs this rank owns (j mod world), local index j // world
        cache = Path(work_dir) / ("teacher" if not d.enabled else f"teacher-rank{d.rank}")
        shards = precompute_topk(teacher, mine, cache, cfg, pad_id=pad_id, autocast=autocast) if mine else None
        teacher = None  # the cache replaces the teacher: free the copy before training
        data_bytes, tokens, disk = d.sum_all([shards.data_bytes, shards.tokens, shards.disk_bytes] if mine
                                             else [0.0, 0.0, 0.0])
        metrics["ofsd/teacher_bytes_per_token"] = data_bytes / max(1, tokens)
        metrics["ofsd/teacher_disk_bytes"] = disk
    elif cfg.teacher_mode == "topk":  # no pairs: nothing written; the nominal cost per token
        metrics["ofsd/teacher_bytes_per_token"] = float(bytes_per_token(cfg.topk))
    else:  # exact: nothing is stored; for reference, what caching fp32 logits over the vocabulary would take
        vocab = getattr(getattr(model, "config", None), "vocab_size", None) or len(tokenizer)
        metrics["ofsd/teacher_bytes_per_token"] = float(vocab * 4)
    t_teacher = time.perf_counter() - t1
    t2 = time.perf_counter()
    if items and before_training is not None:
        before_training(model)
    if items:
        train_stats = distill(model, items, cfg, pad_id=pad_id, teacher=teacher, shards=shards, seed=seed,
                              progress=progress, autocast=autocast, dist=d)
        in_loop_teacher = train_stats.pop("time/ofsd_teacher_s")
        t_teacher += in_loop_teacher
        metrics.update(train_stats)
    else:
        in_loop_teacher = 0.0
        log.warning("OFSD phase: no distillation pairs to train on (%s); the policy is unchanged (fix: more "
                    "ofsd.questions, or ofsd.min_pairs to sample further questions until there are pairs)",
                    {k: v for k, v in metrics.items() if k.startswith("ofsd/skipped")})
    t_train = time.perf_counter() - t2 - in_loop_teacher
    model.train(was_training)
    del teacher
    metrics.update({"time/ofsd_rollout_s": t_roll, "time/ofsd_teacher_s": t_teacher, "time/ofsd_train_s": t_train,
                    "time/ofsd_s": time.perf_counter() - t0})
    return metrics

