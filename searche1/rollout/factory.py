"""Pick the rollout engine a run asks for (``rollout.engine``) and keep its weights in step with the trainer.

``hf`` samples with the trainer's own model (nothing to sync), or, where bf16 is native and the trainer is fp32, with
a bf16 copy of it (``rollout.sampler_dtype``; DESIGN §4 measured ~1.5× faster generation on a CPU with native bf16)
whose weights are copied over after every optimizer step. ``vllm`` builds a colocated ``vllm.LLM`` on the policy's
folder (or reuses this process's, see ``_COLOCATED``) and pushes the trainer's weights into it after every optimizer
step (:func:`searche1.rollout.vllm_colocated.push_weights`): by reference in-process (the default), by RPC when
``rollout.vllm_multiprocessing`` gives vLLM's engine its own process; under a launcher each rank's engine uses vLLM's
``external_launcher`` executor (:func:`launcher_kwargs`). ``vllm-server`` talks to a ``vllm serve`` process and,
after every step, saves the policy to ``RUN/vllm-sync-rankN/`` (safetensors) and asks the server to reload it by
path: one rank per server does (:func:`server_for_rank`), the others wait. With either vLLM engine the trainer
re-scores the sampled tokens itself (``rollout.recompute_logprobs``, see train.py). The trainer also calls ``sync()``
once before its first rollout: a reused colocated engine or a server may hold another phase's weights, or a resumed
run's older ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from searche1.errors import ConfigError
from searche1.rollout.types import RolloutConfig, server_urls

log = logging.getLogger(__name__)

_COLOCATED: dict[str, Any] = {}
"""Colocated ``vllm.LLM`` engines of this process by settings and model shape: a pipeline's later GRPO phases reuse
the first phase's engine (vLLM frees its GPU memory unreliably, and a restart costs 30-70 s) and get their starting
weights by the push :func:`searche1.train.run_grpo` makes before its first rollout."""


def sampler_dtype(cfg: RolloutConfig, model: Any, device: str):
    """The dtype of the HF engine's sampling copy, or ``None`` to sample with the trainer's model itself."""
    import torch

    from searche1.models import cpu_has_native_bf16

    current = next(model.parameters()).dtype
    if cfg.sampler_dtype == "same":
        return None
    if cfg.sampler_dtype == "auto":
        native = device.startswith("cuda") or cpu_has_native_bf16()
        want = torch.bfloat16 if native else current
    else:
        want = getattr(torch, cfg.sampler_dtype)
    return None if want == current else want


def make_engine(cfg: RolloutConfig, model: Any, tok: Any, retriever: Any, *, model_path: str | Path,
                sync_dir: Path, device: str, copy: bool = False, seed: int | None = None,
                dist: Any = None) -> tuple[Any, Callable[[], None], bool]:
    """``(engine, sync, exact)``: call ``sync()`` after each optimizer step so the sampler uses the new weights;
    ``exact`` is False when the sampler's log-probs are not the trainer's (a bf16 copy, vLLM), so the trainer
    re-scores the sampled tokens. ``copy`` forces the HF engine onto its own copy of the weights even in the same
    dtype (FSDP: the trainer's model is about to be sharded); ``sync`` then gathers the shards (every rank calls
    it). ``seed`` seeds a new colocated vLLM engine's own generator (``vllm.LLM(seed=...)``; it samples requests
    without a seed, ``rollout.vllm_request_seeds: false``; in-process vLLM also reseeds the process's global RNGs
    with it); a reused engine keeps its first seed and stream. ``dist`` (:class:`searche1.distributed.Dist`, this
    rank among several) picks a ``vllm-server`` rank's server (:func:`server_for_rank`); every rank calls ``sync``,
    only the first rank on each server saves and reloads, and all wait at a barrier before sampling."""
    if cfg.engine == "hf":
        from searche1.rollout.hf_engine import HFEngine

        dtype = sampler_dtype(cfg, model, device)
        if dtype is None and not copy:
            return HFEngine(model, tok, retriever, cfg), lambda: None, True
        import copy as copy_module

        import torch

        from searche1.sharding import full_tensor

        sampler = copy_module.deepcopy(model).eval()
        if dtype is not None:
            sampler = sampler.to(dtype)
        for p in sampler.parameters():
            p.requires_grad_(False)

        @torch.no_grad()
        def sync() -> None:  # the trainer's weights, cast, into the sampling copy (same module structure)
            for dst, src in zip(sampler.parameters(), model.parameters()):
                dst.copy_(full_tensor(src))

        return HFEngine(sampler, tok, retriever, cfg), sync, dtype is None
    from searche1.rollout.tokens import generation_eos_ids

    eos_ids = generation_eos_ids(getattr(model, "generation_config", None))
    if cfg.engine == "vllm":
        from searche1.rollout.vllm_colocated import push_weights

        llm = colocated_llm(cfg, model_path, getattr(model, "config", None), device, seed)
        return _vllm_engine(llm, tok, retriever, cfg, eos_ids), lambda: push_weights(llm, model), False
    from searche1.checkpoint import hf_state_dict, save_policy
    from searche1.io import atomic_dir

    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    url, pusher = server_for_rank(cfg.vllm_url, rank, world)
    client = _server_client(cfg, url)

    def sync() -> None:
        if pusher:
            _save_and_reload()
        if dist is not None and dist.enabled:
            dist.barrier()  # no rank samples from a server before its reload is done

    def _save_and_reload() -> None:  # on a GPU the server samples in bf16: fp32 trained weights are written as bf16
        import torch

        state, seen = None, set()
        if device.startswith("cuda") and any(p.dtype == torch.float32 for p in model.parameters()):
            state = {}
            for k, v in hf_state_dict(model).items():
                if v.data_ptr() in seen:  # a tied weight (the LM head): saved once, as save_pretrained does
                    continue
                seen.add(v.data_ptr())
                state[k] = v.detach().to(torch.bfloat16) if v.is_floating_point() else v
        with atomic_dir(sync_dir, overwrite=True) as tmp:
            save_policy(model, tok, tmp, state_dict=state)  # HF layout; LoRA merged
        client.reload_weights(str(sync_dir.resolve()))

    return _vllm_engine(client, tok, retriever, cfg, eos_ids), sync, False


def colocated_llm(cfg: RolloutConfig, model_path: str | Path, model_config: Any, device: str,
                  seed: int | None = None, *, key_extra: str = "") -> Any:
    """This process's colocated ``vllm.LLM`` for these settings and model shape (built on ``model_path`` the first
    time, reused after: see ``_COLOCATED``); ``key_extra`` keeps engines apart that must not share weights."""
    import os

    from searche1.rollout.vllm_colocated import load_llm

    # in-process: push_weights reaches the model by reference; else by RPC (pickled functions and tensors)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if cfg.vllm_multiprocessing else "0"
    if cfg.vllm_multiprocessing:
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    kwargs = {"gpu_memory_utilization": cfg.vllm_gpu_memory_utilization, "max_model_len": cfg.max_total_tokens,
              "dtype": "bfloat16" if device.startswith("cuda") else "auto", **launcher_kwargs(cfg),
              **({"seed": seed} if seed is not None else {}), **cfg.vllm_kwargs}
    shape = {k: v for k, v in kwargs.items() if k != "seed"}  # another seed alone does not need a new engine
    key = json.dumps({"kwargs": shape, "mp": cfg.vllm_multiprocessing, "extra": key_extra, "model": [
        getattr(model_config, k, None) for k in (
            "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")]},
        sort_keys=True, default=str)
    llm = _COLOCATED.get(key)
    if llm is None:
        llm = _COLOCATED[key] = load_llm(str(model_path), **kwargs)
    else:
        log.info("reusing this process's colocated vLLM engine (its weights are pushed before the first rollout)")
    return llm


def launcher_kwargs(cfg: RolloutConfig) -> dict[str, Any]:
    """``vllm.LLM`` keywords for a colocated engine on one rank of several (``WORLD_SIZE`` > 1, set by the launcher).

    vLLM's default single-GPU executor takes its GPU from the device string (plain ``cuda``: GPU 0) and its rank as
    0, so every rank's engine would load onto GPU 0. ``distributed_executor_backend="external_launcher"`` (as TRL's
    colocate mode does) makes each engine read ``RANK`` / ``LOCAL_RANK`` from the launcher and build its groups from
    the trainer's process group: with tensor-parallel size 1 every rank is its own data-parallel replica ("external
    DP" in vLLM's group layout) and samples its own questions. That executor needs the engine in this process, and
    the ranks of one tensor-parallel group would have to sample the same prompts, so both are refused. Departure:
    found by reading vLLM 0.20's executor and group code; not yet run on several GPUs."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return {}
    if cfg.vllm_multiprocessing:
        raise ConfigError(f"rollout.vllm_multiprocessing: with {world} ranks each rank's colocated vLLM engine must "
                          "run in its own trainer process (vLLM's external_launcher executor) (fix: "
                          "rollout.vllm_multiprocessing: false, or engine: vllm-server)")
    if int(cfg.vllm_kwargs.get("tensor_parallel_size", 1)) > 1:
        raise ConfigError(f"rollout.vllm_kwargs.tensor_parallel_size: with {world} ranks each rank samples its own "
                          "questions with its own colocated engine, so vLLM's tensor parallelism across ranks does "
                          "not apply (fix: drop tensor_parallel_size, or engine: vllm-server with `vllm serve "
                          "--tensor-parallel-size N`)")
    return {"distributed_executor_backend": "external_launcher"}


def server_for_rank(vllm_url: str | None, rank: int, world: int) -> tuple[str, bool]:
    """``(url, pushes)`` for ``rank`` of ``world``: the ranks are split into ``n`` contiguous blocks, one per server
    (rank ``r`` samples from server ``r * n // world``: with one server per node, a node's ranks use its own), and
    the first rank of each block pushes the weights to its server after each step. All ranks hold the same weights
    after a step, so one reload per server is enough: W ranks on one server used to save the policy W times and
    reload it W times a step."""
    urls = server_urls(vllm_url)
    if not urls:
        raise ConfigError("vllm_url: engine vllm-server needs the server's URL (fix: vllm_url: http://HOST:PORT)")
    if len(urls) > world:
        raise ConfigError(f"vllm_url: {len(urls)} servers for {world} rank(s), so {len(urls) - world} would never "
                          f"be used (fix: list at most {world})")
    n = len(urls)
    return urls[rank * n // world], rank == 0 or (rank - 1) * n // world != rank * n // world


def _server_client(cfg: RolloutConfig, url: str | None = None) -> Any:
    from searche1.rollout.vllm_engine import VLLMServerClient

    return VLLMServerClient(url or server_urls(cfg.vllm_url)[0], concurrency=cfg.vllm_server_concurrency)


def _vllm_engine(backend: Any, tok: Any, retriever: Any, cfg: RolloutConfig, eos_ids: Any) -> Any:
    from searche1.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(backend, tok, retriever, cfg, eos_token_ids=eos_ids)


def saved_model_engine(cfg: RolloutConfig, model_path: str | Path, tok: Any, retriever: Any,
                       device: str = "auto") -> Any:
    """A vLLM engine (``cfg.engine``: vllm or vllm-server) sampling a saved model folder, with nothing to sync: for
    ``searche1 eval --engine vllm``. No HF model is loaded; the EOS ids come from the folder's generation config.
    The colocated engine is built on the folder (one per folder in this process); a ``vllm serve`` must already
    serve that model, nothing checks it is the same."""
    from searche1.models import resolve_device
    from searche1.rollout.tokens import generation_eos_ids

    if cfg.engine not in ("vllm", "vllm-server"):
        raise ValueError(f"saved_model_engine: engine {cfg.engine!r} is not a vLLM engine")
    path = Path(model_path)
    try:
        from transformers import GenerationConfig

        eos_ids = generation_eos_ids(GenerationConfig.from_pretrained(str(path)))
    except OSError:  # no generation_config.json: the tokenizer's EOS only
        eos_ids = ()
    if cfg.engine == "vllm-server":
        return _vllm_engine(_server_client(cfg), tok, retriever, cfg, eos_ids)
    from transformers import AutoConfig

    llm = colocated_llm(cfg, path, AutoConfig.from_pretrained(str(path)), resolve_device(device),
                        key_extra=str(path.resolve()))
    return _vllm_engine(llm, tok, retriever, cfg, eos_ids)
