"""Checkpoints: the model in HF layout (safetensors) plus optimizer, scheduler, RNG and loop state, written atomically.

Layout of ``RUN/checkpoints/step-000010/``::

    model.safetensors, config.json, tokenizer files     (HF layout: loadable with from_pretrained / `searche1 eval`)
    optimizer.pt, scheduler.pt                           (torch state dicts)
    rng.pt                                               (python, numpy, torch CPU and CUDA generator states)
    trainer_state.json                                   (step, data cursor, lr scale, health state; written LAST)

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

from searche1.io import atomic_dir, fault_point

STATE_FILE = "trainer_state.json"
_STEP_RE = re.compile(r"^step-(\d+)$")


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
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": model_state} if model_state else {}))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
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
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_RE.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def checkpoint_at_or_before(run_dir: str | Path, step: int) -> Path | None:
    """The newest complete checkpoint of a step <= ``step`` (None if there is none)."""
    found = [p for p in list_checkpoints(run_dir) if int(_STEP_RE.match(p.name).group(1)) <= step]
    return found[-1] if found else None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: str | Path, model, optimizer=None, scheduler=None, *, restore_rng: bool = True) -> dict:
    """Load weights (and optimizer, scheduler, RNG) from a checkpoint folder into existing objects; returns its state."""
    from safetensors.torch import load_file

    path = Path(path)
    weights = {}
    for f in sorted(path.glob("*.safetensors")):
        weights.update(load_file(str(f)))
    from searche1.sharding import is_sharded, load_model_state, load_optimizer_state

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
    if optimizer is not None:  # index-keyed (plain AdamW, ZeRO) or name-keyed (FSDP), into any layout
        load_optimizer_state(model, optimizer, torch.load(path / "optimizer.pt", weights_only=False))
    if scheduler is not None and (path / "scheduler.pt").is_file():
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    if restore_rng:
        set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return json.loads((path / STATE_FILE).read_text())
