"""The PPO "old" log-probs of a GRPO batch when the sampler is not the trainer (a vLLM engine, a bf16 sampling copy).

The sampler's log-probs are then not the trainer's own, so the trainer supplies them (``rollout.recompute_logprobs``):
with one PPO epoch the loss forward's detached log-probs (:func:`fuse_rescore`: no extra pass), with several a
no-grad re-scoring pass before the update (:func:`rescore`). Either way the mean absolute gap to the sampler's
log-probs is accumulated as ``(sum, tokens)`` (:func:`add_gap`) for ``rollout/logprob_mismatch``, over the rows
whose sampler returned log-probs (vLLM: ``rollout.vllm_logprobs``). Departure from veRL, which always runs the
re-scoring pass; TRL skips it with one iteration, as here.
"""

from __future__ import annotations

import torch

from searche1.rollout.types import RolloutConfig
from searche1.scoring import masked_logprobs

__all__ = ["add_gap", "fuse_rescore", "rescore"]


def fuse_rescore(recompute: bool, ppo_epochs: int) -> bool:
    """Whether the loss forward stands in for the re-scoring pass. With one PPO epoch the re-scored log-probs would
    equal that forward's own (same weights; these models have no dropout), so its detached log-probs are the "old"
    policy (ratio 1, as TRL does with one iteration) and the gap to the sampler is taken from them: one forward over
    the batch fewer per step. With several epochs every epoch needs the same fixed "old" log-probs: a pass of its
    own."""
    return recompute and ppo_epochs == 1


@torch.no_grad()
def rescore(model, ids, attn, mask, old, micros: list[tuple[list[int], int]], rollout: RolloutConfig, device: str,
             autocast: bool, has_sampler: torch.Tensor):
    """The trainer's own log-probs of the sampled tokens (the PPO "old" policy) and their mean absolute gap to the
    sampler's over the policy tokens of the rows where ``has_sampler`` (bool, per row), as (sum, tokens)."""
    was = model.training
    model.eval()
    temp = rollout.temperature if not rollout.greedy else 1.0
    new = torch.zeros_like(old)
    for sl, prefix in micros:  # (row positions, shared prefix length): searche1.scoring.micro_batches
        new[sl] = masked_logprobs(model, ids[sl], attn[sl], mask[sl], temperature=temp, device=device,
                                  autocast=autocast, prefix=prefix).cpu()
    model.train(was)
    return new * mask, add_gap((0.0, 0.0), new, old, mask, has_sampler)


def add_gap(gap: tuple[float, float], new, old, mask, has_sampler: torch.Tensor) -> tuple[float, float]:
    """``gap`` (sum, tokens) plus the absolute log-prob gap between ``new`` (trainer) and ``old`` (sampler) over the
    policy tokens (``mask``) of the rows where ``has_sampler``."""
    m = mask * has_sampler[:, None].to(mask.dtype)
    return gap[0] + float(((new - old).abs() * m).sum()), gap[1] + float(m.sum())
