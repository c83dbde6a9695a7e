"""Fully sharded training (FSDP, the ZeRO-3 layout) for the GRPO trainer: ``grpo.sharding: full``.

Under several ranks, every decoder layer and then the whole model go through torch's FSDP2 ``fully_shard``: each
rank stores 1/N of every parameter, of its gradient and of the AdamW state, and all-gathers a layer's weights just
for that layer's forward and backward. What the rest of the trainer sees:

* **Gradient sum, not mean.** The loss is already divided by the global normaliser (searche1.distributed), so the
  gradients must be summed over ranks; FSDP's reduce-scatter averages, so the trainer backpropagates
  ``world × loss`` (``set_gradient_divide_factor(1.0)`` would do the same on NCCL but
  needs ``PREMUL_SUM``, which gloo lacks).
* **Lockstep passes.** A forward all-gathers, so every rank must run the same number of micro-batches. Ranks pad
  their kept rollouts to the largest count with copies whose policy mask is all zero (exactly zero loss and
  gradient; :func:`lockstep_pad`).
* **Sampling from a full copy.** Generation runs on an unsharded copy of the policy (the HF engine's sampling copy
  or vLLM), refreshed after each optimizer step from the all-gathered weights (:func:`full_tensor`); dev
  evaluations on rank 0 use that copy too.
* **Checkpoints stay plain.** Rank 0 writes the gathered full weights in HF layout and the gathered full AdamW
  state keyed by parameter name (:func:`full_optimizer_state`); :func:`load_optimizer_state` reads either that or
  a plain index-keyed AdamW state into a sharded or unsharded run.
* **bf16 gathers** (``grpo.fsdp_param_dtype``; by default whenever bf16 autocast is on): FSDP's
  ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` all-gathers each layer's weights in bf16 and
  computes with them, then reduce-scatters the gradients in fp32 into the fp32 shards AdamW updates (what veRL and
  accelerate configure). Half the all-gather traffic and gathered-weight memory of the fp32 gathers; the numbers
  differ from the replicated trainer's autocast at bf16 rounding (norm weights and embeddings are bf16 too).

The OFSD phase shards the same way (``ofsd.sharding: full``: :mod:`searche1.ofsd.phase`, which pads ranks to lockstep
with idle zero-loss passes). Departures: LoRA policies and the ``vllm-server`` engine are refused with
``sharding: full``; no CPU offload.
"""

from __future__ import annotations

from typing import Any

import torch

from searche1.distributed import Dist

SHARDINGS = ("none", "optimizer", "full")


def is_sharded(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def gather_dtype(setting: str, autocast: bool) -> torch.dtype | None:
    """``grpo.fsdp_param_dtype`` as :func:`shard_model`'s ``param_dtype``: bf16 when asked, or under ``auto`` when
    the phase computes in bf16 by autocast; None (fp32 gathers) otherwise."""
    return torch.bfloat16 if setting == "bfloat16" or (setting == "auto" and autocast) else None


def shard_model(model: Any, dist: Dist, device: str, param_dtype: torch.dtype | None = None) -> Any:
    """FSDP2 over every ``*DecoderLayer`` module, then the root (embeddings, final norm, a tied head).
    ``param_dtype`` (e.g. bf16): gather and compute in it, reduce gradients in fp32 (module docstring)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.split(":")[0], (dist.world,))
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    if not layers:
        raise ValueError(f"sharding: full found no *DecoderLayer modules in {type(model).__name__}")
    kw = {} if param_dtype is None else {"mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype,
                                                                          reduce_dtype=torch.float32)}
    for layer in layers:
        fully_shard(layer, mesh=mesh, **kw)
    fully_shard(model, mesh=mesh, **kw)
    return model  # gradients are averaged over ranks: backpropagate world × loss for their sum


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor shard (an all-gather: every rank must call it); plain tensors pass through."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def local_numel(t: torch.Tensor) -> int:
    return t.to_local().numel() if hasattr(t, "to_local") else t.numel()


def full_model_state(model: Any) -> dict[str, torch.Tensor]:
    """The gathered full weights on rank 0 (CPU), empty elsewhere; a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if getattr(model.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)  # tied to the embeddings: HF checkpoints store it once
    return sd


def full_optimizer_state(model: Any, opt: torch.optim.Optimizer) -> dict:
    """The gathered full AdamW state keyed by parameter name, on rank 0 (CPU); a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_model_state(model: Any, weights: dict[str, torch.Tensor]) -> None:
    """Full (unsharded) weights into a sharded model; every rank passes the same dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))


def load_optimizer_state(model: Any, opt: torch.optim.Optimizer, state: dict) -> None:
    """A checkpoint's optimizer state into ``opt``: name-keyed (from :func:`full_optimizer_state`) or index-keyed
    (a plain or ZeRO-consolidated AdamW), into a sharded or unsharded model."""
    keys = list(state.get("state", {}).keys()) or [p for g in state.get("param_groups", []) for p in g["params"]]
    by_name = bool(keys) and isinstance(keys[0], str)
    if not by_name and not is_sharded(model):
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if not by_name:  # index i = the i-th parameter the optimizer was built with (trainable, in module order)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        state = {"state": {names[i]: v for i, v in state["state"].items()},
                 "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))


def lockstep_pad(n_kept: int, dist: Dist) -> int:
    """How many all-zero-mask rows this rank adds so every rank runs as many rows as the busiest one."""
    return int(dist.max(n_kept)) - n_kept
