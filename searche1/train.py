"""GRPO training: the vanilla RL stage of Search-E1, as one flat loop you can read in one sitting.

    sample questions → G rollouts each → EM rewards → group advantages → micro-batched clipped-surrogate loss with
    gradient accumulation → AdamW step (clipping, LR warm-up) → metrics → health check → periodic checkpoint

Departures from the paper / peers, all options:
* no KL penalty by default (β = 0, no reference model is loaded), as in Search-E1;
* only policy-sampled tokens count (the rollout's policy mask; retrieved ``<information>`` tokens are masked);
* groups whose rewards are all equal carry no signal: they are counted and can be skipped;
* the "old" policy for the PPO ratio: the sampler's log-probs when the sampler is the trainer's fp32 model (the ratio
  of the first epoch is then 1 up to numerical noise, recorded as ``loss/ratio_mean``); else (vLLM, a bf16 sampling
  copy) the trainer's own, from the loss forward itself with one PPO epoch (ratio exactly 1; no re-scoring pass, as
  TRL) or from a no-grad pass before the update with several. The gap is logged as ``rollout/logprob_mismatch``;
  ``grpo.tis_cap`` adds truncated importance sampling for it (:mod:`searche1.algos.importance`; off by default,
  as Search-E1 mentions none);
* a non-finite loss or gradient skips the step; collapse detection can roll back to the last good checkpoint.

Everything is deterministic given the seed and the step, so a run killed at any point resumes from its newest
checkpoint without repeating or skipping a step (the data cursor and RNG states are saved with it).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from collections.abc import Callable
from typing import Literal

import torch

from searche1.config import ConfigError, to_dict
from searche1.data.types import QAExample
from searche1.health import HealthConfig
from searche1.io import fault_point
from searche1.models import ModelConfig
from searche1.old_logprobs import add_gap, fuse_rescore, rescore
from searche1.retrieval.config import RetrievalConfig
from searche1.rollout.types import Episode, RolloutConfig
from searche1.scoring import can_share_prefix, masked_logprobs, micro_batches

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    train: list[Path] = field(default_factory=list, metadata={"help": "training QA files (FlashRAG/Search-R1/HF)"})
    dev: list[Path] = field(default_factory=list, metadata={"help": "dev QA files evaluated every eval_every steps"})
    dev_limit: int = field(default=20, metadata={"help": "dev questions per dataset in periodic evaluations"})

    def validate(self) -> None:
        if self.dev_limit < 1:
            raise ConfigError("dev_limit: must be >= 1")


@dataclass
class GRPOConfig:
    steps: int = field(default=20, metadata={"help": "optimizer steps"})
    questions_per_step: int = field(default=8, metadata={"help": "questions sampled per step"})
    group_size: int = field(default=5, metadata={"help": "rollouts per question (G)"})
    lr: float = field(default=2e-6, metadata={"help": "AdamW learning rate"})
    warmup_steps: int = field(default=2, metadata={"help": "linear LR warm-up steps"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 disables)"})
    micro_batch_size: int = field(default=4, metadata={"help": "sequences per forward/backward"})
    share_prompt: bool = field(default=True, metadata={
        "help": "in the update, run the prompt prefix a micro-batch's rows share (a group's prompt, or the "
                "instructions) once and the rows on its KV cache (same loss and gradients; off under FSDP and "
                "gradient checkpointing)"})
    ppo_epochs: int = field(default=1, metadata={"help": "passes over each batch of rollouts"})
    clip_low: float = field(default=0.2, metadata={"help": "ratio clip 1 - clip_low"})
    clip_high: float = field(default=0.2, metadata={"help": "ratio clip 1 + clip_high"})
    tis_cap: float = field(default=0.0, metadata={
        "help": "truncated importance sampling for the sampler-trainer gap (vLLM, a bf16 sampling copy): each "
                "token's surrogate is weighted by min(pi_old / pi_sampler, tis_cap), pi_old being the trainer's "
                "log-probs; 0 = off (Search-E1). Needs the sampler's log-probs of every episode: with a vLLM "
                "engine an unset rollout.vllm_logprobs then means all (each token with log-probs costs vLLM's front "
                "end ~8x the CPU: see rollout.vllm_logprobs)"})
    advantage: str = field(default="grpo", metadata={"help": "grpo ((r-mean)/std) | no_std"})
    loss_agg: str = field(default="token_mean", metadata={"help": "token_mean | seq_mean_token_mean | dr_grpo"})
    kl_beta: float = field(default=0.0, metadata={"help": "k3 KL to the reference policy; 0 = off (Search-E1)"})
    kl_reference: Literal["initial", "round_start"] = field(default="initial", metadata={
        "help": "the KL reference in a pipeline: initial = the pipeline's starting model (model.name_or_path) in "
                "every round; round_start = each GRPO round's starting model (after the OFSD phase before it)"})
    skip_zero_std_groups: bool = field(default=False, metadata={"help": "drop groups whose rewards are all "
                                                                  "equal (and their tokens from the loss normaliser)"})
    reward: str = field(default="em", metadata={"help": "em | f1"})
    bf16: Literal["auto", "on", "off"] = field(default="auto", metadata={
        "help": "bf16 autocast for training; auto = GPU or CPU with native bf16"})
    seed: int = field(default=0, metadata={"help": "data order and sampling seed"})
    save_every: int = field(default=10, metadata={"help": "checkpoint every N steps (and at the end)"})
    keep_last: int = field(default=2, metadata={"help": "checkpoints kept"})
    eval_every: int = field(default=0, metadata={
        "help": "dev evaluation before training, every N steps and after the last step; 0 = off"})
    sharding: Literal["none", "optimizer", "full"] = field(default="none", metadata={
        "help": "under several ranks: none (replicas) | optimizer (ZeRO-1: AdamW state split) | full (FSDP: "
                "weights, gradients and state split)"})
    fsdp_param_dtype: Literal["auto", "float32", "bfloat16"] = field(default="auto", metadata={
        "help": "sharding: full (and ofsd.sharding: full): the dtype FSDP all-gathers the weights in and computes "
                "with (its MixedPrecisionPolicy: gradients are reduced in fp32 into the fp32 shards AdamW updates); "
                "bfloat16 halves the all-gather traffic and the gathered copies. auto = bfloat16 when the phase's "
                "bf16 autocast is on (grpo.bf16, ofsd.bf16), else float32. Its speed is not yet measured on GPUs"})

    def validate(self) -> None:
        for name in ("steps", "questions_per_step", "group_size", "micro_batch_size", "ppo_epochs", "save_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1")
        if self.max_grad_norm < 0:
            raise ConfigError("max_grad_norm: must be >= 0 (0 disables clipping)")
        if self.group_size < 2:
            raise ConfigError("group_size: GRPO needs at least 2 rollouts per question")
        if self.lr <= 0:
            raise ConfigError("lr: must be > 0")
        if not (self.tis_cap >= 0 and math.isfinite(self.tis_cap)):
            raise ConfigError(f"tis_cap: must be a finite number >= 0 (0 = off); got {self.tis_cap}")
        if self.sharding not in ("none", "optimizer", "full"):
            raise ConfigError(f"sharding: unknown '{self.sharding}' (fix: use none, optimizer or full)")
        if self.fsdp_param_dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"fsdp_param_dtype: unknown '{self.fsdp_param_dtype}' (fix: auto, float32 or "
                              f"bfloat16)")
        # the registry names resolve only when training starts (after the model is loaded and --out written): check
        # them here, so a typo fails before anything is loaded or written
        from searche1.algos import get_advantage, get_policy_loss
        from searche1.rewards import get_reward

        for name, get in (("advantage", get_advantage), ("loss_agg", get_policy_loss), ("reward", get_reward)):
            try:
                get(getattr(self, name))
            except ConfigError as e:
                raise ConfigError(f"{name}: {e}") from None


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    retrieval: RetrievalConfig = field(default_factory=lambda: RetrievalConfig())
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    data: DataConfig = field(default_factory=DataConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    sinks: list[str] = field(default_factory=list, metadata={"help": "extra metric sinks: tensorboard, wandb"})

    def validate(self) -> None:
        bad = [s for s in self.sinks if s not in ("tensorboard", "wandb")]
        if bad:
            raise ConfigError(f"sinks: unknown sink {bad[0]!r}; valid: tensorboard, wandb")
        for section in ("grpo", "ofsd"):  # a pipeline's OFSD phase may come hours after the first GRPO phase
            sub = getattr(self, section, None)
            if getattr(sub, "sharding", None) == "full" and (self.model.lora_r > 0
                                                             or self.rollout.engine == "vllm-server"):
                raise ConfigError(f"{section}.sharding: full does not combine with LoRA or rollout.engine: "
                                  f"vllm-server (fix: {section}.sharding: optimizer)")
        if self.grpo.tis_cap > 0:
            r = self.rollout
            if r.recompute_logprobs is False:
                raise ConfigError("grpo.tis_cap: the importance weight compares the trainer's log-probs with the "
                                  "sampler's, and rollout.recompute_logprobs: false makes them the same (fix: leave "
                                  "recompute_logprobs unset or true, or tis_cap: 0)")
            if r.engine != "hf" and r.vllm_logprobs is None:
                r.vllm_logprobs = True  # the weight needs the sampler's log-prob of every token
            elif r.engine != "hf" and r.vllm_logprob_fraction() < 1:
                raise ConfigError(f"grpo.tis_cap: needs the sampler's log-probs of every episode, but "
                                  f"rollout.vllm_logprobs is {r.vllm_logprobs} (fix: rollout.vllm_logprobs: true, "
                                  f"or leave it unset)")


class QuestionSampler:
    """Deterministic epoch-wise shuffling; ``cursor`` (questions consumed) is the whole state."""

    def __init__(self, questions: list[QAExample], seed: int, cursor: int = 0) -> None:
        if not questions:
            raise ConfigError("data.train: no training questions loaded")
        self.questions, self.seed, self.cursor = questions, seed, cursor
        self._epoch, self._idx = -1, []  # the current epoch's order, shuffled once per epoch

    def _order(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            self._idx = list(range(len(self.questions)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(self._idx)
            self._epoch = epoch
        return self._idx

    def take(self, n: int) -> list[QAExample]:
        out = []
        for _ in range(n):
            epoch, pos = divmod(self.cursor, len(self.questions))
            out.append(self.questions[self._order(epoch)[pos]])
            self.cursor += 1
        return out


def use_bf16(setting: str, device: str) -> bool:
    from searche1.models import cpu_has_native_bf16

    if setting == "on":
        return True
    if setting == "off":
        return False
    return device.startswith("cuda") or cpu_has_native_bf16()


def episode_tensors(eps: list[Episode], pad_id: int):
    """Right-padded ``ids`` (B, T), ``mask`` (B, T-1) over predicted tokens (policy tokens only) and the sampler's
    log-probs ``old`` (B, T-1), aligned so position t predicts ids[:, t+1]."""
    T = max(len(e.prompt_ids) + len(e.response_ids) for e in eps)
    ids = torch.full((len(eps), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(eps), T), dtype=torch.long)
    mask = torch.zeros((len(eps), T - 1))
    old = torch.zeros((len(eps), T - 1))
    for b, e in enumerate(eps):
        seq = e.prompt_ids + e.response_ids
        P, n = len(e.prompt_ids), len(seq)
        ids[b, :n] = torch.tensor(seq)
        attn[b, :n] = 1
        mask[b, P - 1 : n - 1] = torch.tensor(e.policy_mask, dtype=torch.float)
        old[b, P - 1 : n - 1] = torch.tensor(e.logprobs)
    return ids, attn, mask, old


def batch_denominator(mask: torch.Tensor, agg: str, max_len: int) -> float:
    """This batch's share of the loss normaliser (unclamped; summed over ranks, then clamped to >= 1 by the
    caller), so micro-batch losses add up to the full-batch loss (see algos.aggregate)."""
    if agg == "token_mean":
        return float(mask.sum())
    if agg == "seq_mean_token_mean":
        return float((mask.sum(-1) > 0).sum())
    return float(mask.shape[0] * max_len)  # dr_grpo


RETRIEVAL_FAILURE_LIMIT = 0.5
"""A GRPO step whose episodes ended on a retrieval error in this share or more stops the run before its update."""


def check_retrieval(eps: list[Episode], d, step: int) -> None:
    """Stop the run (a :class:`RetrievalError`, before the step's update) when most of the step's episodes, over all
    ranks, ended on a retrieval error: the retriever is down (the client has already retried), and training on
    those episodes would teach the policy that searching fails. Isolated failures only end their own episodes."""
    from searche1.errors import RetrievalError
    from searche1.rollout.types import StopReason

    bad = [e for e in eps if e.stop_reason == StopReason.RETRIEVAL_ERROR]
    failed, total = d.sum_all([len(bad), len(eps)])
    if total and failed >= RETRIEVAL_FAILURE_LIMIT * total:
        first = bad[0].metrics.get("retrieval_error", "?") if bad else "on another rank"
        raise RetrievalError(f"step {step}: {failed:.0f} of {total:.0f} episodes ended on a retrieval error (first: "
                             f"{first}); the step was not trained (fix: bring the retriever back, then run the same "
                             "command with --resume: it continues from the newest checkpoint)")


def rollout_metrics(eps: list[Episode]) -> dict:
    from collections import Counter

    from searche1 import protocol

    n = len(eps)
    stops = Counter(e.stop_reason.value for e in eps)
    return {
        "reward/em": sum(e.metrics.get("reward/em", 0.0) for e in eps) / n,
        "reward/f1": sum(e.metrics.get("reward/f1", 0.0) for e in eps) / n,
        "rollout/searches": sum(e.searches for e in eps) / n,
        "rollout/valid_format": sum(protocol.is_valid_format(e.response_text) for e in eps) / n,
        "rollout/policy_tokens": sum(e.num_policy_tokens for e in eps) / n,
        "rollout/response_tokens": sum(len(e.response_ids) for e in eps) / n,
        **{f"rollout/stop_{k}": v / n for k, v in stops.items()},
    }


def run_grpo(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
             stop_after: int | None = None,
             episode_reward: Callable[[Episode], tuple[float, dict]] | None = None, data_cursor: int = 0,
             reference: str | None = None) -> Path:
    """Train with GRPO per ``cfg`` into ``out_dir`` (metrics.jsonl, checkpoints/, config.json); returns ``out_dir``.

    ``resume`` continues from the newest complete checkpoint. ``stop_after`` ends this invocation after that many
    steps (interruption tests). ``episode_reward`` replaces the registered answer reward ``cfg.grpo.reward`` with a
    function of the whole episode (custom rewards, tests). ``data_cursor``: questions already used (a pipeline's
    later GRPO rounds go on through the data where the previous round stopped); a checkpoint's cursor wins.
    ``reference``: the KL reference model's folder when ``grpo.kl_beta > 0`` (default ``model.name_or_path``; a
    pipeline passes its starting model, see ``grpo.kl_reference``)."""
    from tqdm.auto import tqdm

    from searche1.algos import get_advantage, get_policy_loss, kl_k3, truncated_is_weights
    from searche1.checkpoint import checkpoint_at_or_before, latest_checkpoint, load_checkpoint, save_checkpoint
    from searche1.data.qa import load_qa, load_qa_files
    from searche1.distributed import (
        check_shared_dir,
        consolidate_optimizer,
        init_distributed,
        make_adamw,
        merge_metrics,
        optimizer_state_bytes,
        rank_device,
    )
    from searche1.health import CollapseDetector
    from searche1.io import write_json
    from searche1.metrics import LossStats, MetricsLogger
    from searche1.models import load_policy, resolve_device, resolve_model_path
    from searche1.retrieval.config import make_retriever
    from searche1.rewards import get_reward
    from searche1.rollout.factory import make_engine
    from searche1.sharding import (full_model_state, full_optimizer_state, full_tensor, gather_dtype,
                                   lockstep_pad, shard_model)

    if not cfg.data.train:  # fail before loading anything
        raise ConfigError("data.train: give at least one training QA file")
    out = Path(out_dir)
    ckpt = latest_checkpoint(out) if resume else None
    if not resume and (out / "metrics.jsonl").exists():
        raise FileExistsError(f"{out} already holds a run (fix: pass --resume to continue it, or another --out)")
    device = resolve_device(cfg.model.device)
    d = init_distributed(device)  # data-parallel ranks under accelerate launch / torchrun (searche1.distributed)
    if d.enabled:
        device = rank_device(device)
    check_shared_dir(d, out)  # on several nodes every rank must see rank 0's files (checkpoints, resume)
    d.barrier()  # every rank has checked --out before rank 0 writes to it
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", to_dict(cfg))
    g = cfg.grpo
    model_cfg = ModelConfig(**{**cfg.model.__dict__, "device": device,
                               # resuming: the checkpoint's weights, but a LoRA run rebuilds its base model and
                               # load_checkpoint gives it the adapter (the checkpoint's weights are merged)
                               **({"name_or_path": str(ckpt)} if ckpt is not None and not cfg.model.lora_r else {})})
    torch.manual_seed(g.seed)  # a LoRA adapter's initialisation (the same on every rank), dropout
    model, tok = load_policy(model_cfg, trainable=True)
    full = g.sharding == "full" and d.enabled  # FSDP (searche1.sharding); LoRA / vllm-server refused by validate()
    # the sampler first: under FSDP it must copy the weights before they are sharded
    retriever = make_retriever(cfg.retrieval)
    engine, sync_sampler, exact_logprobs = make_engine(cfg.rollout, model, tok, retriever, device=device,
                                                       model_path=resolve_model_path(model_cfg.name_or_path),
                                                       sync_dir=out / f"vllm-sync-rank{d.rank}", copy=full,
                                                       seed=g.seed * 1000 + d.rank,  # vLLM's own generator
                                                       dist=d)
    autocast = use_bf16(g.bf16, device)
    if full:
        shard_model(model, d, device, param_dtype=gather_dtype(g.fsdp_param_dtype, autocast))
    eval_model = getattr(engine, "model", model) if full else model  # rank 0's dev evals: unsharded weights
    ref_cfg = ModelConfig(**{**cfg.model.__dict__, "device": device,
                             "name_or_path": reference or cfg.model.name_or_path})
    ref_model = load_policy(ref_cfg)[0] if g.kl_beta > 0 else None  # β = 0 (Search-E1): no reference model
    share_ref = ref_model is not None and can_share_prefix(ref_model)
    questions = [q for f in cfg.data.train for q in load_qa(f)]
    dev = load_qa_files(cfg.data.dev) if cfg.data.dev and g.eval_every else {}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_adamw(params, lr=g.lr, weight_decay=g.weight_decay, dist=d, shard=g.sharding == "optimizer")
    lr_scale = 1.0  # lowered by collapse rollbacks; lr = g.lr * lr_scale * linear warm-up
    health = CollapseDetector(cfg.health)
    start, cursor = 0, data_cursor
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, opt)
        start, cursor, lr_scale = state["step"], state["cursor"], state.get("lr_scale", 1.0)
        health.load_state_dict(state.get("health", {}))
        log.info("resumed from %s (step %d)", ckpt, start)
    sampler = QuestionSampler(questions, g.seed, cursor)
    # no checkpoint yet: a resumed run starts over, so drop every logged line (step 0's evaluation included)
    metrics_log = MetricsLogger(out, cfg.sinks, config=to_dict(cfg), resume_step=start if ckpt else -1) \
        if d.is_main else None
    advantage_fn = get_advantage(g.advantage)
    loss_fn = get_policy_loss(g.loss_agg)
    reward_fn = get_reward(g.reward)
    recompute = cfg.rollout.recompute_logprobs
    if recompute is None:
        recompute = not exact_logprobs  # a bf16 sampling copy or vLLM: its log-probs are not the trainer's
    fused = fuse_rescore(recompute, g.ppo_epochs)
    gen_budget = cfg.rollout.max_turn_tokens * (cfg.rollout.max_searches + 1)
    sync_sampler()  # a reused colocated vLLM engine or a server may hold another phase's (or an older run's) weights
    if dev and start == 0 and d.is_main:  # the starting point of the dev curve
        metrics_log.log(0, dev_eval(eval_model, tok, retriever, dev, cfg, out / "evals" / "step-0.json", engine,
                                    progress=progress))
    d.barrier()
    bar = tqdm(total=g.steps, initial=start, desc="grpo", disable=not progress or not d.is_main, unit="step")
    done_here = 0
    for step in range(start + 1, g.steps + 1):
        t0, cpu0 = time.perf_counter(), time.process_time()
        # ---- rollouts (policy in eval mode, no grad)
        mine = d.shard(g.questions_per_step)  # this rank's whole groups; every rank draws the same questions
        qs = sampler.take(g.questions_per_step)[mine]
        model.eval()
        eps = engine.run([q for q in qs for _ in range(g.group_size)], seed=g.seed * 1_000_003 + step,
                         first_index=mine.start * g.group_size)
        t_roll = time.perf_counter() - t0
        check_retrieval(eps, d, step)
        rewards = []
        for e in eps:
            r, m = episode_reward(e) if episode_reward is not None else reward_fn(e.answer, e.answers)
            e.reward = r
            e.metrics.update(m)
            rewards.append(r)
        adv, adv_metrics = advantage_fn(torch.tensor(rewards), g.group_size)  # (N,)
        t_reward = time.perf_counter() - t0 - t_roll
        keep = list(range(len(eps)))
        if g.skip_zero_std_groups:
            keep = [i for i in keep if any(rewards[j] != rewards[i] for j in range(
                (i // g.group_size) * g.group_size, (i // g.group_size + 1) * g.group_size))]
        t1 = time.perf_counter()
        # ---- policy update: micro-batches with gradient accumulation over the whole batch
        model.train()
        policy_loss, updates = 0.0, 0  # the loss summed over ranks, per optimizer step taken
        skipped = 0.0
        grad_norm = float("nan")
        gap = (0.0, 0.0)  # sampler vs trainer log-prob gap: (sum, tokens) on this rank
        kept_all = d.sum(len(keep))
        # FSDP: every rank runs as many rows as the busiest one; padded rows have an all-zero mask (no loss, no grad)
        rows = keep + [0] * (lockstep_pad(len(keep), d) if full and kept_all else 0)
        losses = LossStats()
        micros: list[tuple[list[int], int]] = []  # (row positions, shared prefix length) of the update's micro-batches
        if kept_all and rows:  # the batch and its "old" log-probs, once: every PPO epoch uses the same ones
            if g.tis_cap and not all(eps[i].sampler_logprobs for i in keep):  # validate() asks for them all
                raise ConfigError("grpo.tis_cap: some episodes came without the sampler's log-probs, which the "
                                  "importance weights need (fix: rollout.vllm_logprobs: true)")
            ids, attn, mask, old = episode_tensors([eps[i] for i in rows], tok.pad_token_id)
            sampled = old  # the sampler's log-probs (the "old" ones unless the trainer's replace them)
            # FSDP ranks must run the same forwards, so no shared prefix there (it adds a forward of its own)
            share = g.share_prompt and not full and can_share_prefix(model)
            micros = micro_batches([eps[i].prompt_ids for i in rows], g.micro_batch_size, share)
            mask[len(keep):] = 0
            a = adv[rows]
            a[len(keep):] = 0.0
            if recompute:
                # the gap only where the sampler returned log-probs (vLLM: rollout.vllm_logprobs of the episodes)
                has = torch.tensor([eps[i].sampler_logprobs for i in rows[:len(keep)]]
                                   + [False] * (len(rows) - len(keep)))
                if not fused:
                    old, gap = rescore(model, ids, attn, mask, old, micros, cfg.rollout, device, autocast, has)
        for _epoch in range(g.ppo_epochs):
            opt.zero_grad(set_to_none=True)
            if not kept_all:
                break
            losses.epochs += 1
            denom = max(1.0, d.sum(batch_denominator(mask[:len(keep)], g.loss_agg, gen_budget) if keep else 0.0))
            total = 0.0
            for sl, prefix in micros:
                temp = cfg.rollout.temperature if not cfg.rollout.greedy else 1.0  # the sampler's distribution
                # (b, T-1) fp32: the LM head only at columns with policy tokens, the micro-batch cut to its longest
                # row, the prompt prefix its rows share run once (searche1.scoring)
                logp = masked_logprobs(model, ids[sl], attn[sl], mask[sl], temperature=temp, device=device,
                                       autocast=autocast, prefix=prefix)
                b_mask = mask[sl].to(device)
                if fused:  # one epoch: the "old" policy is this forward's own (ratio 1), no re-scoring pass
                    b_old = logp.detach()
                    gap = add_gap(gap, b_old.cpu(), old[sl], mask[sl], has[sl])
                else:
                    b_old = old[sl].to(device)
                w, wm = truncated_is_weights(b_old, sampled[sl].to(device), b_mask, g.tis_cap) if g.tis_cap else \
                    (None, {})
                loss, m = loss_fn(logp, b_old, a[sl].to(device), b_mask, clip_low=g.clip_low,
                                  clip_high=g.clip_high, max_len=gen_budget, denom=denom, is_weight=w)
                m = {**m, **wm}
                if ref_model is not None:
                    with torch.no_grad():
                        ref_logp = masked_logprobs(ref_model, ids[sl], attn[sl], mask[sl], temperature=temp,
                                                   device=device, autocast=autocast,
                                                   prefix=prefix if share_ref else 0)
                    kl, km = kl_k3(logp, ref_logp, b_mask, agg=g.loss_agg, max_len=gen_budget, denom=denom)
                    loss = loss + g.kl_beta * kl
                    m = {**m, **km}
                (loss * d.world if full else loss).backward()  # FSDP averages gradients over ranks: undo it
                fault_point(f"step{step}:backward")
                total += float(loss.detach())
                losses.add(m)  # lockstep padding rows have no policy tokens: they count for nothing
            if not full:  # FSDP reduce-scatters (sums) the gradients itself
                d.all_reduce_grads(params)  # sum: each rank's loss is already divided by the global normaliser
            total = d.sum(total)
            if os.environ.get("SEARCHE1_GRAD_DUMP"):  # tests: the step's full-batch gradient
                _dump_grads(model, Path(os.environ["SEARCHE1_GRAD_DUMP"]) / f"step-{step}.safetensors", d)
            grad_norm = float(full_tensor(torch.nn.utils.clip_grad_norm_(params, g.max_grad_norm or math.inf)))
            if not (math.isfinite(total) and math.isfinite(grad_norm)):
                opt.zero_grad(set_to_none=True)
                skipped = 1.0
                log.warning("step %d: non-finite loss/gradient (loss %s, grad norm %s): update skipped",
                            step, total, grad_norm)
                break
            for group in opt.param_groups:
                group["lr"] = g.lr * lr_scale * min(1.0, step / max(1, g.warmup_steps))
            opt.step()
            sync_sampler()
            policy_loss, updates = policy_loss + total, updates + 1
        t_train = time.perf_counter() - t1
        local = {**rollout_metrics(eps), **adv_metrics, "time/rollout_s": t_roll, "time/reward_s": t_reward,
                 "time/train_s": t_train, "time/step_s": time.perf_counter() - t0,
                 "time/step_cpu_s": time.process_time() - cpu0}
        parts = d.gather((local, float(len(eps)), gap, losses.state()))
        metrics = {**merge_metrics([(m, w) for m, w, *_ in parts]), **LossStats.merge([p[3] for p in parts]),
                   "grad/norm": grad_norm,
                   "train/skipped_nonfinite": skipped, "train/lr": opt.param_groups[0]["lr"],
                   "train/kept_rollouts": kept_all, "mem/optimizer_state_mb": optimizer_state_bytes(opt) / 2**20}
        if updates:
            metrics["loss/policy"] = policy_loss / updates  # already summed over ranks
        if gap_tokens := sum(n for _, _, (_, n), _ in parts):  # none when every "old" log-prob was a zero
            metrics["rollout/logprob_mismatch"] = sum(s for _, _, (s, _), _ in parts) / gap_tokens
        if dev and (step % g.eval_every == 0 or step == g.steps):
            if d.is_main:
                metrics.update(dev_eval(eval_model, tok, retriever, dev, cfg, out / "evals" / f"step-{step}.json",
                                        engine, progress=progress))
            metrics = d.gather(metrics)[0]  # every rank takes rank 0's view (collapse decisions agree)
        collapsed = health.update(metrics)
        if collapsed:
            metrics["health/collapse"] = 1.0
        if collapsed := health.just_collapsed(collapsed):  # act once per collapse, not on every low step after it
            log.warning("step %d: collapse of %s (far below the recent level for %d steps)",
                        step, ", ".join(collapsed), cfg.health.patience)
            d.barrier()
            # the first low step's rollouts came from the weights saved at its previous step: those are bad too
            last = checkpoint_at_or_before(out, step - health.streak(collapsed) - 1)
            if cfg.health.rollback_on_collapse and last is None:
                log.warning("no checkpoint from before the collapse to roll back to (fix: save_every smaller than "
                            "health.patience, keep_last larger)")
            if cfg.health.rollback_on_collapse and last is not None:
                load_checkpoint(last, model, opt, None, restore_rng=False)
                sync_sampler()
                lr_scale *= cfg.health.lr_factor
                health.reset()
                metrics["health/rollback_to"] = int(last.name.split("-")[1])
                log.warning("rolled back to %s; lr scale now %.3g", last, lr_scale)
        if metrics_log is not None:
            metrics_log.log(step, metrics)
        bar.update(1)
        bar.set_postfix(em=f"{metrics['reward/em']:.2f}", fmt=f"{metrics['rollout/valid_format']:.2f}")
        if step % g.save_every == 0 or step == g.steps:
            fault_point(f"step{step}:before_save")
            consolidate_optimizer(opt)  # ZeRO: gather the AdamW state shards on rank 0 (every rank takes part)
            gathered = (full_model_state(model), full_optimizer_state(model, opt)) if full else (None, None)
            if d.is_main:
                save_checkpoint(out, step, model, tok, opt, None,
                                {"cursor": sampler.cursor, "lr_scale": lr_scale, "health": health.state_dict()},
                                keep_last=g.keep_last, model_state=gathered[0], optimizer_state=gathered[1])
            d.barrier()
        done_here += 1
        if stop_after is not None and done_here >= stop_after:
            break
    bar.close()
    if metrics_log is not None:
        metrics_log.close()
    return out


def _dump_grads(model, path: Path, d) -> None:
    """Rank 0 writes the full gradient (sharded gradients are gathered: every rank calls this)."""
    from safetensors.torch import save_file

    from searche1.sharding import full_tensor

    grads = {n: full_tensor(p.grad.detach()).clone().contiguous() for n, p in model.named_parameters()
             if p.grad is not None}
    if d.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(grads, str(path))


def dev_eval(model, tok, retriever, dev: dict, cfg: TrainConfig, save_to: Path | None = None,
             engine=None, progress: bool = False) -> dict:
    """Greedy agent evaluation on the dev sets with the run's search settings; the full ``searche1 eval`` JSON is
    written to ``save_to`` (``evals/step-N.json``, per-question outcomes in ``step-N.samples.jsonl`` for paired
    comparisons: ``searche1 compare``) and the namespaced summary is returned for the metrics log. With the run's
    ``engine`` a vLLM one (its weights are the trainer's: pushed after every step), the evaluation decodes with it
    (``searche1 eval --engine vllm`` gives the same decoding); else with our HF engine on ``model``. ``progress``:
    a bar of questions (an evaluation takes minutes on a CPU)."""
    from searche1.evaluate import EvalConfig, evaluate
    from searche1.io import write_json

    model.eval()
    r = cfg.rollout
    vllm = callable(getattr(engine, "with_config", None))
    ecfg = EvalConfig(mode="agent", limit=cfg.data.dev_limit, max_searches=r.max_searches, topk=r.topk,
                      max_doc_tokens=r.max_doc_tokens, max_turn_tokens=r.max_turn_tokens, batch_size=r.batch_size,
                      engine=r.engine if vllm else "hf", vllm_url=r.vllm_url)
    res = evaluate(model, tok, retriever, dev, ecfg, progress=progress,
                   samples_out=save_to.with_suffix(".samples.jsonl") if save_to is not None else None,
                   engine=engine.with_config(replace(ecfg.rollout(), vllm_stream_turns=r.vllm_stream_turns))
                   if vllm else None)
    if save_to is not None:
        write_json(save_to, res)
    out = {f"dev/{name}/em": d["em"] for name, d in res["datasets"].items()}
    out["dev/em"] = res["average"]["em"]
    out["dev/f1"] = res["average"]["f1"]
    out["dev/searches"] = res["average"]["searches"]
    out["dev/valid_format"] = res["average"]["valid_format"]
    return out
