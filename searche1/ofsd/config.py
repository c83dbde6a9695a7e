"""The OFSD phase's settings (``ofsd:`` in a pipeline config); the phase itself is :mod:`searche1.ofsd.phase`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from searche1.algos.distill import DEFAULT_BETA, DEFAULT_CLIP, DEFAULT_TOPK, get_distill_loss
from searche1.errors import ConfigError
from searche1.ofsd.contexts import get_context
from searche1.ofsd.pairs import REFERENCE_RULES, STUDENT_RULES

__all__ = ["OFSDConfig"]


@dataclass
class OFSDConfig:
    samples_per_question: int = field(default=5, metadata={"help": "rollouts re-sampled per question (K)"})
    questions: int = field(default=32, metadata={"help": "training questions sampled per phase (seeded; all if fewer)"})
    min_pairs: int = field(default=0, metadata={
        "help": "if the sampled questions give fewer pairs, sample further batches of `questions` new questions "
                "until this many (0 = one batch, as the paper)"})
    max_questions: int = field(default=0, metadata={
        "help": "cap on the questions one phase samples while min_pairs extends it (0 = 4 × questions; at or below "
                "questions: no extension)"})
    context: str = field(default="sibling", metadata={"help": "teacher's privileged context: sibling | answer | "
                                                              "hindsight"})
    show_information: bool = field(default=True, metadata={"help": "sibling: show τ_ref's retrieved passages"})
    show_answer: bool = field(default=True, metadata={"help": "sibling: show τ_ref's <answer>"})
    student: str = field(default="most_different", metadata={"help": "most_different | all_others"})
    reference: str = field(default="fewest_searches", metadata={"help": "fewest_searches | shortest"})
    correct_threshold: float = field(default=1.0, metadata={"help": "reward at or above which a rollout is correct"})
    loss: str = field(default="forward_kl", metadata={"help": "forward_kl | reverse_kl | jsd"})
    clip: float | None = field(default=DEFAULT_CLIP, metadata={"help": "point-wise clip of each vocabulary entry's "
                                                                        "term; null = off"})
    jsd_beta: float = field(default=DEFAULT_BETA, metadata={"help": "JSD teacher weight (0.5 = symmetric)"})
    teacher_mode: Literal["exact", "topk"] = field(default="exact", metadata={
        "help": "exact: full teacher logits each micro-batch; topk: top-k + tail cached once to work_dir/teacher"})
    topk: int = field(default=DEFAULT_TOPK, metadata={"help": "teacher entries kept in topk mode"})
    pairs_per_shard: int = field(default=64, metadata={"help": "pairs per teacher cache shard (topk mode)"})
    max_teacher_tokens: int = field(default=4096, metadata={"help": "skip pairs whose teacher sequence is longer"})
    epochs: int = field(default=2, metadata={"help": "passes over the pair pool"})
    lr: float = field(default=1e-6, metadata={"help": "AdamW learning rate (constant)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    pairs_per_step: int = field(default=8, metadata={"help": "pairs per optimizer step"})
    micro_batch_size: int = field(default=2, metadata={"help": "pairs per forward/backward"})
    share_prompt: bool = field(default=True, metadata={
        "help": "run the prompt prefix a micro-batch's student (and teacher) sequences share (the instructions) "
                "once and the rows on its KV cache: the same loss and gradients for less compute"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 disables)"})
    bf16: Literal["auto", "on", "off"] = field(default="auto", metadata={
        "help": "bf16 autocast for teacher and student; auto = GPU or CPU with native bf16"})
    reward: str = field(default="em", metadata={"help": "reward of the re-sampled rollouts: em | f1"})
    sharding: Literal["none", "optimizer", "full"] = field(default="none", metadata={
        "help": "under several ranks: none (replicas) | optimizer (ZeRO-1: the AdamW state split over ranks) | "
                "full (FSDP: weights, gradients and AdamW state split; bf16 gathers as grpo.fsdp_param_dtype says; "
                "no shared prompt prefix; not with LoRA or vllm-server)"})

    def validate(self) -> None:
        for name in ("samples_per_question", "questions", "epochs", "pairs_per_step", "micro_batch_size", "topk",
                     "pairs_per_shard", "max_teacher_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1")
        for name in ("min_pairs", "max_questions"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0")
        if self.samples_per_question < 2:
            raise ConfigError("samples_per_question: pair mining needs at least 2 rollouts per question")
        if self.lr <= 0:
            raise ConfigError("lr: must be > 0")
        if self.max_grad_norm < 0:
            raise ConfigError("max_grad_norm: must be >= 0 (0 disables clipping)")
        if self.clip is not None and self.clip <= 0:
            raise ConfigError("clip: must be > 0, or null for no clip")
        if not 0.0 <= self.jsd_beta <= 1.0:
            raise ConfigError("jsd_beta: must be in [0, 1]")
        if self.sharding not in ("none", "optimizer", "full"):
            raise ConfigError(f"sharding: unknown '{self.sharding}' (fix: none, optimizer or full)")
        if self.teacher_mode not in ("exact", "topk"):
            raise ConfigError(f"teacher_mode: unknown '{self.teacher_mode}' (fix: use one of: exact, topk)")
        for name, fn in (("context", get_context), ("loss", get_distill_loss)):
            try:
                fn(getattr(self, name))
            except ConfigError as e:
                raise ConfigError(f"{name}: {e}") from None
        from searche1.rewards import get_reward

        try:
            get_reward(self.reward)
        except ConfigError as e:
            raise ConfigError(f"reward: {e}") from None
        for name, valid in (("student", STUDENT_RULES), ("reference", REFERENCE_RULES)):
            if getattr(self, name) not in valid:
                raise ConfigError(f"{name}: unknown rule '{getattr(self, name)}' (fix: use one of: {', '.join(valid)})")
        if self.teacher_mode == "topk" and self.loss != "forward_kl":
            raise ConfigError(f"teacher_mode: topk approximates forward KL only, not '{self.loss}' (fix: set "
                              "teacher_mode: exact, or loss: forward_kl)")
