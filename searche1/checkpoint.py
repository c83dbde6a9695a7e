"""Checkpoints: the model in HF layout (safetensors) plus optimizer, scheduler, RNG and loop state, written atomically.

Layout of ``RUN/checkpoints/step-000010/``::

    model.safetensors, config.json, tokenizer files     (HF layout: loadable with from_pretrained / `searche1 eval`)
    optimizer.pt, scheduler.pt                           (torch state dicts)
    rng.pt                                               (python, numpy, torch CPU and CUDA generator states)
    trainer_state.json                                   (step, data cursor, lr scale, health state; written LAST)
    adapter/                                             (LoRA runs: peft's adapter folder, for resuming)

A LoRA policy (``model.lora_r > 0``) is saved with its adapters merged into the weights (:func:`hf_state_dict`,
computed aside: the training model is not touched), so every checkpoint and phase output is a plain HF folder that
evaluation, vLLM and the next phase load as is; resuming rebuilds the base model from ``model.name_or_path`` and
loads ``adapter/`` into it, so the adapters and their AdamW state continue exactly.

A checkpoint folder is built under a temporary name and renamed into place (:func:`searche1.io.atomic_dir`), so a
SIGKILL at any moment leaves only complete checkpoints under ``step-*`` names. ``latest_checkpoint`` returns the
newest folder that holds ``trainer_state.json``; older ones beyond ``keep_last`` are deleted after a successful save.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from searche1.errors import ConfigError
from searche1.io import atomic_dir, fault_point

STATE_FILE = "trainer_state.json"
ADAPTER_DIR = "adapter"
_STEP_RE = re.compile(r"^step-(\d+)$")


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def hf_state_dict(model) -> dict:
    """The policy's weights under their HF names; a peft LoRA model's active adapters merged in (W + ΔW from each
    LoRA layer's ``get_delta_weight``, in fp32, cast back), without changing the model."""
    if not is_peft(model):
        return model.state_dict()
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    layers = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    out = {}
    with torch.no_grad():
        sd = base.state_dict()
    for k, v in sd.items():
        if "lora_" in k:
            continue
        if ".base_layer." in k:
            name, _, leaf = k.rpartition(".base_layer.")
            if leaf == "weight":
                layer = layers[name]
                with torch.no_grad():
                    delta = sum(layer.get_delta_weight(a).float() for a in layer.active_adapters
                                if a in layer.lora_A)
                v = (v.float() + delta).to(v.dtype)
            k = f"{name}.{leaf}"
        out[k] = v
    return out


def save_policy(model, tokenizer, out: str | Path, *, state_dict: dict | None = None) -> None:
    """The policy in HF layout into folder ``out`` (safetensors, config, tokenizer); a LoRA model merged, with its
    adapter in ``out/adapter/``. ``state_dict`` replaces ``model.state_dict()`` (FSDP: the gathered one)."""
    out = Path(out)
    if is_peft(model):
        model.get_base_model().save_pretrained(out, safe_serialization=True, state_dict=hf_state_dict(model))
        model.save_pretrained(out / ADAPTER_DIR, safe_serialization=True)
    else:
        model.save_pretrained(out, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | Path, step: int, model, tokenizer, optimizer, scheduler, state: dict,
                    keep_last: int = 3, model_state: dict | None = None, optimizer_state: dict | None = None) -> Path:
    """Write checkpoint ``step`` atomically and prune old ones; returns its folder. ``model_state`` /
    ``optimizer_state`` replace ``model.state_dict()`` / ``optimizer.state_dict()`` (FSDP: the gathered full ones,
    searche1.sharding)."""
    root = Path(run_dir) / "checkpoints"
    out = root / f"step-{step:06d}"
    with atomic_dir(out, overwrite=True) as tmp:
        save_policy(model, tokenizer, tmp, state_dict=model_state)
        torch.save(optimizer_state if optimizer_state is not None else optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        fault_point(f"step{step}:mid_save")
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2) + "\n")
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return out


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_RE.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def checkpoint_at_or_before(run_dir: str | Path, step: int) -> Path | None:
    """The newest complete checkpoint of a step <= ``step`` (None if there is none)."""
    found = [p for p in list_checkpoints(run_dir) if int(_STEP_RE.match(p.name).group(1)) <= step]
    return found[-1] if found else None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def refuse_run_folder(path: str | Path, what: str) -> None:
    """Raise a ConfigError naming the model to use when ``path`` (given as ``what``, e.g. ``--model``) is a
    training run folder rather than a model folder: transformers said only "Unrecognized model ... Should have a
    `model_type` key in its config.json"."""
    path = Path(path)
    if not path.is_dir() or (path / "model.safetensors").is_file():
        return
    if (path / "pipeline.json").is_file():
        from searche1.pipeline import _recorded_path

        done = json.loads((path / "pipeline.json").read_text()).get("phases") or []
        model = _recorded_path(path, done[-1]["model"]) if done else None
    elif (path / "checkpoints").is_dir():
        model = latest_checkpoint(path)
    else:
        return
    fix = f"{what} {model} (its newest model)" if model else "a model folder: this run has saved none yet"
    raise ConfigError(f"{what} {path}: is a training run folder, not a model (fix: {fix})")


def load_checkpoint(path: str | Path, model, optimizer=None, scheduler=None, *, restore_rng: bool = True) -> dict:
    """Load weights (and optimizer, scheduler, RNG) from a checkpoint folder into existing objects; returns its state.
    A peft LoRA model (built on the run's base model) gets the checkpoint's adapter."""
    path = Path(path)
    from searche1.sharding import is_sharded, load_model_state, load_optimizer_state

    if is_peft(model):
        _load_adapter(path, model)
    else:
        _load_weights(path, model, is_sharded, load_model_state)
    if optimizer is not None:  # index-keyed (plain AdamW, ZeRO) or name-keyed (FSDP), into any layout
        try:
            load_optimizer_state(model, optimizer, torch.load(path / "optimizer.pt", weights_only=False))
        except (ValueError, KeyError, IndexError, RuntimeError) as e:
            raise ConfigError(
                f"{path}: its optimizer state does not fit the parameters this config trains ({e}) (fix: resume "
                "with the settings the run was started with (model.train_layers, model.lora_r, ...), or start a "
                f"new run from its weights: model.name_or_path: {path})") from None
    if scheduler is not None and (path / "scheduler.pt").is_file():
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    if restore_rng:
        set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return json.loads((path / STATE_FILE).read_text())


def _load_adapter(path: Path, model) -> None:
    """A LoRA checkpoint's adapter into a peft model built on the run's base model (every adapter tensor must
    match)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    f = path / ADAPTER_DIR / "adapter_model.safetensors"
    if not f.is_file():
        raise RuntimeError(f"{path}: no {ADAPTER_DIR}/adapter_model.safetensors, so it cannot resume a LoRA run "
                           "(fix: resume with the model settings the run was started with)")
    result = set_peft_model_state_dict(model, load_file(str(f)))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    unexpected = list(getattr(result, "unexpected_keys", []))
    if missing or unexpected:
        raise RuntimeError(f"{path}: adapter does not match the model (missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}; fix: the same lora_r / lora_target_modules as the run)")


def _load_weights(path: Path, model, is_sharded, load_model_state) -> None:
    from safetensors.torch import load_file

    weights = {}
    for f in sorted(path.glob("*.safetensors")):
        weights.update(load_file(str(f)))
    expected = set(model.state_dict().keys())
    missing = [k for k in expected - weights.keys() if not k.endswith("lm_head.weight")]  # tied: saved once
    unexpected = sorted(weights.keys() - expected)
    if missing or unexpected:
        raise RuntimeError(f"{path}: checkpoint does not match the model (missing {sorted(missing)[:3]}, "
                           f"unexpected {unexpected[:3]})")
    if is_sharded(model):  # FSDP: full tensors in, each rank keeps its shard
        load_model_state(model, weights)
    else:
        model.load_state_dict(weights, strict=False)
        if getattr(model.config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
            model.tie_weights()
