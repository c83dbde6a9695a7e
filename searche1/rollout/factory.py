"""Pick the rollout engine a run asks for (``rollout.engine``) and keep its weights in step with the trainer.

``hf`` samples with the trainer's own model (nothing to sync). ``vllm`` builds a colocated ``vllm.LLM`` on the
policy's folder and pushes the trainer's weights into it after every optimizer step
(:func:`searche1.rollout.vllm_engine.push_weights`). ``vllm-server`` talks to a ``vllm serve`` process and, after
every step, saves the policy to ``RUN/vllm-sync/`` (safetensors) and asks the server to reload it by path. With
either vLLM engine the trainer re-scores the sampled tokens itself (``rollout.recompute_logprobs``, see train.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from searche1.rollout.types import RolloutConfig


def make_engine(cfg: RolloutConfig, model: Any, tok: Any, retriever: Any, *, model_path: str | Path,
                sync_dir: Path, device: str) -> tuple[Any, Callable[[], None]]:
    """``(engine, sync)``: call ``sync()`` after each optimizer step so the sampler uses the new weights."""
    if cfg.engine == "hf":
        from searche1.rollout.hf_engine import HFEngine

        return HFEngine(model, tok, retriever, cfg), lambda: None
    from searche1.rollout.vllm_engine import VLLMEngine

    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
    if cfg.engine == "vllm":
        import os

        from searche1.rollout.vllm_engine import load_llm, push_weights

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # push_weights reaches the model in process
        llm = load_llm(str(model_path), gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                       max_model_len=cfg.max_total_tokens, dtype="bfloat16" if device.startswith("cuda") else "auto")
        return VLLMEngine(llm, tok, retriever, cfg, eos_token_ids=eos_ids), lambda: push_weights(llm, model)
    from searche1.io import atomic_dir
    from searche1.rollout.vllm_engine import VLLMServerClient

    client = VLLMServerClient(cfg.vllm_url)

    def sync() -> None:
        with atomic_dir(sync_dir, overwrite=True) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
        client.reload_weights(str(sync_dir.resolve()))

    return VLLMEngine(client, tok, retriever, cfg, eos_token_ids=eos_ids), sync
