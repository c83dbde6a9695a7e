"""The colocated ``vllm.LLM``: started for rollouts (:func:`load_llm`) and fed the trainer's weights after each
optimizer step (:func:`push_weights`), in this process by reference or to vLLM's engine process by RPC.

Departures: none from the paper (which does not say how it samples); from TRL's colocate mode, the weights go to
vLLM's loader as a stream, one tensor at a time, so an FSDP policy is gathered one tensor at a time too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from searche1.config import ConfigError
from searche1.rollout.vllm_engine import LOGPROBS_MODE, _vllm_version

log = logging.getLogger(__name__)

__all__ = ["load_llm", "push_weights"]


def load_llm(model: str, **kwargs: Any) -> Any:
    """A colocated ``vllm.LLM`` set up for rollouts: ``logprobs_mode=processed_logprobs`` (dropped with a warning on
    vLLM versions without it) and prefix caching. Other keywords go to ``vllm.LLM`` (e.g. ``gpu_memory_utilization``
    to leave room for the trainer, ``dtype``, ``max_model_len``). For :func:`push_weights` to reach the model in
    process, set ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` before creating it (as TRL's colocate mode does)."""
    try:
        from vllm import LLM
    except ImportError as e:
        raise ConfigError(f"engine vllm needs vLLM, which does not import here ({e}) (fix: pip install "
                          "'searche1[vllm]' on a GPU machine, or engine: hf)") from e

    kwargs.setdefault("logprobs_mode", LOGPROBS_MODE)
    kwargs.setdefault("enable_prefix_caching", True)
    try:
        return LLM(model=model, **kwargs)
    except TypeError as e:
        if "logprobs_mode" not in str(e):
            raise
        log.warning("vllm %s has no logprobs_mode; its sampler log-probs may be untempered", _vllm_version())
        kwargs.pop("logprobs_mode")
        return LLM(model=model, **kwargs)


def _attr_path(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def push_weights(llm: Any, model: Any) -> int:
    """Load the trainer's current weights (HF names, LoRA merged) into a colocated ``vllm.LLM``; call it
    after each optimizer step, with no generation in flight. Returns the number of tensors pushed.

    Tried in order: the in-process model (``llm.llm_engine.model_executor.driver_worker[.worker].model_runner.model``:
    vLLM V0, and V1 with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``), then ``llm.apply_model`` (vLLM >= 0.9), then
    ``llm.collective_rpc`` with a function of the worker. The last two ship the tensors to the engine process when
    it runs in one (V1 multiprocessing needs ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` and copies every step), cast
    first to the engine's dtype (``llm_engine.model_config.dtype``). The prefix cache is reset afterwards, since
    cached KV blocks were computed with the old weights.
    """
    while inner := next((getattr(model, w) for w in ("_orig_mod", "module")  # torch.compile / DDP wrappers
                         if hasattr(getattr(model, w, None), "state_dict")), None):
        model = inner
    import torch

    from searche1.checkpoint import hf_state_dict
    from searche1.sharding import full_tensor

    named = list(hf_state_dict(model).items())  # LoRA: merged (vLLM's model has the HF names and no adapters)

    def gathered() -> Iterator[tuple[str, Any]]:
        # FSDP: each full tensor is gathered (a collective: every rank pushes the same names in the same order)
        # only when the engine asks for it, so one tensor is whole at a time, not the whole policy (7B in fp32:
        # 28 GB at once on every GPU otherwise)
        for k, v in named:
            yield k, full_tensor(v.detach())

    target = None
    for path in ("llm_engine.model_executor.driver_worker.model_runner.model",
                 "llm_engine.model_executor.driver_worker.worker.model_runner.model"):
        target = _attr_path(llm, path)
        if target is not None and hasattr(target, "load_weights"):
            break
        target = None
    if target is not None:
        stream = gathered()
        target.load_weights(stream)
        for _ in stream:  # a loader that stopped early: every rank still takes part in every gather
            pass
        return _after_push(llm, len(named))
    # the tensors travel to the engine's process: in vLLM's dtype (fp32 trained weights to a bf16 engine: half)
    dtype = _attr_path(llm, "llm_engine.model_config.dtype")
    cast = isinstance(dtype, torch.dtype)
    weights = [(k, v.to(dtype) if cast and v.is_floating_point() else v) for k, v in gathered()]

    def load(m: Any) -> None:
        m.load_weights(weights)

    if callable(getattr(llm, "apply_model", None)):
        llm.apply_model(load)
    elif callable(getattr(llm, "collective_rpc", None)):
        def load_on_worker(worker: Any) -> None:
            load(worker.get_model() if hasattr(worker, "get_model") else worker.model_runner.model)

        llm.collective_rpc(load_on_worker)
    else:
        raise RuntimeError(
            f"push_weights: cannot reach the model inside this vLLM engine (vllm {_vllm_version()}, "
            f"{type(llm).__name__}): no llm_engine.model_executor.driver_worker...model, apply_model or "
            "collective_rpc. Fix: set VLLM_ENABLE_V1_MULTIPROCESSING=0 before creating the LLM, or use the server "
            "mode and VLLMServerClient.reload_weights(path)")
    return _after_push(llm, len(weights))


def _after_push(llm: Any, n: int) -> int:
    # vLLM 0.20 (BlockPool.reset_prefix_cache) keeps the cache and returns False while a request holds KV blocks
    if callable(getattr(llm, "reset_prefix_cache", None)) and llm.reset_prefix_cache() is False:
        log.warning("push_weights: vLLM kept its prefix cache (requests in flight?): cached prompts may be served "
                    "with KV blocks of the old weights")
    return n
