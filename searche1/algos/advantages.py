"""Group-relative advantages for GRPO: one scalar per rollout, shared by all of its policy tokens.

``A_i = (r_i − mean(r_g)) / (std(r_g) + eps)`` over the rollouts ``g`` of the same question (``grpo``), or
``A_i = r_i − mean(r_g)`` (``no_std``, Dr. GRPO: dividing by the std up-weights questions that are nearly all right or
all wrong).

Choices, and how they depart from the paper (Search-E1 uses vanilla GRPO and states only the formula above):

- ``std`` is the **sample (unbiased, n−1) std**, as ``torch.std`` computes it in DeepSeekMath-style GRPO and TRL's
  ``GRPOTrainer``. Pass ``unbiased=False`` for the population std (as in some verl versions). A group of one rollout
  has no sample std; it is given std 0 (so ``A = 0``), never NaN.
- A group whose rewards are all equal has ``r − mean = 0`` exactly (the test is ``max == min``, not a float std), so
  its advantages are exactly 0: it adds nothing to the policy gradient. The fraction of such groups is logged as
  ``grpo/zero_std_groups``; a value near 1 means the batch is too easy or too hard to learn from.
- ``eps`` defaults to 1e-6 (TRL uses 1e-4); it only matters for near-constant groups.

Groups are given either as an ``int`` group size (rollouts of a question are contiguous: ``rewards.view(-1, G)``) or as
a ``(N,)`` tensor of group ids (any integers, any order). Metrics are Python floats.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from searche1.errors import ConfigError

__all__ = ["ADVANTAGES", "DEFAULT_ADVANTAGE", "AdvantageFn", "get_advantage", "grpo_advantages",
           "group_advantages", "no_std_advantages"]

AdvantageFn = Callable[..., tuple[Tensor, dict[str, float]]]

DEFAULT_ADVANTAGE = "grpo"


def _group_index(groups: Tensor | Sequence[int] | int, n: int, device: torch.device) -> tuple[Tensor, int]:
    """Dense group index ``(N,)`` in ``[0, num_groups)`` and ``num_groups`` from a group size or group ids."""
    if isinstance(groups, numbers.Integral) and not isinstance(groups, bool):
        groups = int(groups)
        if groups <= 0 or n % groups != 0:
            raise ConfigError(f"group_size={groups} does not divide the {n} rewards (fix: pass rewards in contiguous "
                              "groups of group_size rollouts, or pass group ids)")
        return torch.arange(n, device=device) // groups, n // groups
    ids = torch.as_tensor(groups, device=device)
    if ids.shape != (n,):
        raise ValueError(f"group ids must have shape ({n},) like the rewards; got {tuple(ids.shape)}")
    uniq, inv = torch.unique(ids, return_inverse=True)
    return inv, int(uniq.numel())


def group_advantages(
    rewards: Tensor,  # (N,) one reward per rollout
    groups: Tensor | Sequence[int] | int,  # group size G, or (N,) group ids
    *,
    scale: bool = True,
    eps: float = 1e-6,
    unbiased: bool = True,
) -> tuple[Tensor, dict[str, float]]:  # (N,) advantages, metrics
    """Group-normalised advantages (``scale=True``: GRPO; ``scale=False``: Dr. GRPO, mean-centred only).

    Returns ``A (N,)`` (float32, or float64 for float64 rewards; no gradient) and metrics ``grpo/zero_std_groups``
    (fraction of groups whose rewards are all equal), ``grpo/reward_mean``, ``grpo/reward_std`` (mean within-group std),
    ``grpo/adv_abs_mean`` and ``grpo/num_groups``.
    """
    r = torch.as_tensor(rewards).detach()
    if r.dim() != 1:
        raise ValueError(f"rewards must have shape (N,); got {tuple(r.shape)}")
    r = r.to(torch.float64 if r.dtype == torch.float64 else torch.float32)  # (N,)
    n = r.numel()
    if n == 0:
        return r.clone(), {"grpo/zero_std_groups": 0.0, "grpo/reward_mean": 0.0, "grpo/reward_std": 0.0,
                           "grpo/adv_abs_mean": 0.0, "grpo/num_groups": 0.0}
    idx, k = _group_index(groups, n, r.device)  # (N,), number of groups

    count = torch.zeros(k, dtype=r.dtype, device=r.device).index_add_(0, idx, torch.ones_like(r))  # (K,)
    mean = torch.zeros(k, dtype=r.dtype, device=r.device).index_add_(0, idx, r) / count  # (K,)
    rmax = torch.full((k,), -torch.inf, dtype=r.dtype, device=r.device).scatter_reduce_(0, idx, r, "amax")  # (K,)
    rmin = torch.full((k,), torch.inf, dtype=r.dtype, device=r.device).scatter_reduce_(0, idx, r, "amin")  # (K,)
    constant = rmax == rmin  # (K,) all rewards of the group equal

    centred = torch.where(constant[idx], torch.zeros_like(r), r - mean[idx])  # (N,) exactly 0 in constant groups
    ssq = torch.zeros(k, dtype=r.dtype, device=r.device).index_add_(0, idx, centred * centred)  # (K,)
    dof = (count - 1) if unbiased else count  # (K,)
    std = torch.where(dof > 0, ssq / dof.clamp(min=1), torch.zeros_like(ssq)).sqrt()  # (K,) 0 for singletons
    adv = centred / (std[idx] + eps) if scale else centred  # (N,)

    stats = torch.stack([constant.to(r.dtype).mean(), r.mean(), std.mean(), adv.abs().mean()]).tolist()
    metrics = {
        "grpo/zero_std_groups": stats[0],
        "grpo/reward_mean": stats[1],
        "grpo/reward_std": stats[2],
        "grpo/adv_abs_mean": stats[3],
        "grpo/num_groups": float(k),
    }
    return adv, metrics


def grpo_advantages(rewards: Tensor, groups: Tensor | Sequence[int] | int, *, eps: float = 1e-6,
                    unbiased: bool = True) -> tuple[Tensor, dict[str, float]]:
    """``(r − mean) / (std + eps)`` per group (vanilla GRPO, the Search-E1 choice); see :func:`group_advantages`."""
    return group_advantages(rewards, groups, scale=True, eps=eps, unbiased=unbiased)


def no_std_advantages(rewards: Tensor, groups: Tensor | Sequence[int] | int, *, eps: float = 1e-6,
                      unbiased: bool = True) -> tuple[Tensor, dict[str, float]]:
    """``r − mean`` per group (Dr. GRPO; ``eps``/``unbiased`` only affect the logged std); see
    :func:`group_advantages`."""
    return group_advantages(rewards, groups, scale=False, eps=eps, unbiased=unbiased)


#: name -> ``fn(rewards (N,), groups, *, eps=1e-6, unbiased=True) -> (A (N,), metrics)``.
ADVANTAGES: dict[str, AdvantageFn] = {"grpo": grpo_advantages, "no_std": no_std_advantages}


def get_advantage(name: str = DEFAULT_ADVANTAGE) -> AdvantageFn:
    """The advantage function registered as ``name``; an unknown name fails listing the valid ones."""
    try:
        return ADVANTAGES[name]
    except KeyError:
        valid = ", ".join(sorted(ADVANTAGES))
        raise ConfigError(f"unknown advantage '{name}' (fix: use one of: {valid})") from None
