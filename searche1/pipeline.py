"""The self-evolution pipeline: a schedule of phases — GRPO round, OFSD phase, GRPO round, OFSD phase (the paper
runs 2 rounds) — each phase in its own folder, checkpointed and resumable.

    RUN/phase-00-grpo/      a GRPO run (metrics.jsonl, checkpoints/)
    RUN/phase-01-ofsd/      model/ (the distilled policy), metrics.json
    RUN/phase-02-grpo/      ...
    RUN/pipeline.json       the schedule and each finished phase's output model (relative to RUN)

A phase is finished when its output is recorded in ``pipeline.json`` (written atomically after the phase's model is
saved). ``--resume`` skips finished phases, continues an interrupted GRPO phase from its newest checkpoint, and
restarts an interrupted OFSD phase from its beginning (an OFSD phase is short and its only state is the model).
Each phase starts from the previous phase's output; the first from ``model.name_or_path``. A GRPO round goes on
through the training questions where the previous round stopped (its data cursor is recorded in ``pipeline.json``):
round 2 does not replay round 1's questions. With ``grpo.kl_beta > 0`` every round's KL reference is the
pipeline's starting model (``grpo.kl_reference: initial``; ``round_start``: the round's own starting model). With a
vLLM rollout engine (``rollout.engine``) the OFSD phases sample their groups with it too: the process's colocated
engine is reused and gets the phase's starting weights pushed first (a server reloads them by path).

Under a launcher (``accelerate launch`` / ``torchrun``, :mod:`searche1.distributed`) every phase runs data-parallel
on all ranks; rank 0 writes ``pipeline.json``, the configs and the phase models, the other ranks wait at barriers
and read them back (several nodes need a shared file system for ``--out``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from searche1.checkpoint import save_policy
from searche1.config import ConfigError, to_dict
from searche1.distributed import Dist
from searche1.io import atomic_dir, fault_point, write_json
from searche1.ofsd.phase import OFSDConfig
from searche1.train import TrainConfig, run_grpo

PHASES = ("grpo", "ofsd")


@dataclass
class PipelineConfig(TrainConfig):
    schedule: list[str] = field(default_factory=lambda: ["grpo"], metadata={
        "help": "phases in order: grpo | ofsd, e.g. [grpo, ofsd, grpo, ofsd] (Search-E1, 2 rounds)"})
    ofsd: OFSDConfig = field(default_factory=OFSDConfig)

    def validate(self) -> None:
        super().validate()
        bad = [p for p in self.schedule if p not in PHASES]
        if bad or not self.schedule:
            hint = " (a list is written [grpo, ofsd]: --set 'schedule=[grpo, ofsd]')" if "," in "".join(bad) else ""
            raise ConfigError(f"schedule: {bad[0] if bad else '[]'!r} is not a phase; valid phases: grpo, ofsd{hint}")


def _phase_dir(out: Path, i: int, kind: str) -> Path:
    return out / f"phase-{i:02d}-{kind}"


def _record_path(out: Path, path: Path) -> str:
    """A phase output as ``pipeline.json`` records it: relative to the run folder, so ``--resume`` works from any
    working folder and after the run folder is moved or copied."""
    try:
        return str(Path(path).resolve().relative_to(out.resolve()))
    except ValueError:
        return str(path)


def _recorded_path(out: Path, recorded: str) -> Path:
    """The path of a recorded phase output; earlier versions recorded it relative to the working folder."""
    path = Path(recorded)
    if path.is_absolute() or (not (out / path).exists() and path.exists()):
        return path
    return out / path


def run_pipeline(cfg: PipelineConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
                 episode_reward=None) -> Path:
    """Run ``cfg.schedule``; returns the folder of the final policy (HF layout)."""
    from searche1.checkpoint import STATE_FILE, latest_checkpoint
    from searche1.distributed import check_shared_dir, init_distributed
    from searche1.models import resolve_device

    d = init_distributed(resolve_device(cfg.model.device))
    out = Path(out_dir)
    check_shared_dir(d, out)  # on several nodes every rank must see rank 0's files (phase outputs, resume)
    state_path = out / "pipeline.json"
    if state_path.is_file() and not resume:
        raise FileExistsError(f"{out} already holds a pipeline run (fix: pass --resume, or another --out)")
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"phases": []}
    if state.get("schedule", cfg.schedule) != cfg.schedule:
        raise ConfigError(f"schedule: the run in {out} used {state['schedule']}, the config says {cfg.schedule}")
    d.barrier()  # every rank has read the state before rank 0 writes
    state["schedule"] = cfg.schedule
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", to_dict(cfg))
    model_path = cfg.model.name_or_path
    cursor = 0  # training questions the GRPO rounds so far have used
    for i, kind in enumerate(cfg.schedule):
        if i < len(state["phases"]):
            model_path = _recorded_path(out, state["phases"][i]["model"])
            cursor = state["phases"][i].get("data_cursor", cursor)
            continue
        pdir = _phase_dir(out, i, kind)
        fault_point(f"phase{i}:start")
        t0 = time.perf_counter()
        phase_cfg = replace(cfg, model=replace(cfg.model, name_or_path=str(model_path)))
        if kind == "grpo":
            run_grpo(phase_cfg, pdir, resume=(pdir / "metrics.jsonl").exists(), progress=progress,
                     episode_reward=episode_reward, data_cursor=cursor,
                     reference=cfg.model.name_or_path if cfg.grpo.kl_reference == "initial" else None)
            result_model = latest_checkpoint(pdir)
            cursor = json.loads((result_model / STATE_FILE).read_text())["cursor"]
            metrics = {}
        else:
            result_model, metrics = _run_ofsd(phase_cfg, pdir, seed=cfg.grpo.seed + i, progress=progress,
                                              episode_reward=episode_reward, dist=d)
        state["phases"].append({"index": i, "kind": kind, "model": _record_path(out, result_model),
                                "data_cursor": cursor,
                                "seconds": round(time.perf_counter() - t0, 1), "metrics": metrics})
        if d.is_main:
            write_json(state_path, state)
        d.barrier()
        model_path = result_model
    return Path(model_path)


def sampler_copy(engine, model):
    """The HF engine's own copy of the policy's weights (a bf16 sampling copy, or FSDP's unsharded one), or None."""
    m = getattr(engine, "model", None)
    return m if m is not None and m is not model else None


def _run_ofsd(cfg: PipelineConfig, pdir: Path, *, seed: int, progress: bool, episode_reward,
              dist: Dist) -> tuple[Path, dict]:
    from searche1.data.qa import load_qa
    from searche1.distributed import rank_device
    from searche1.models import load_policy, resolve_device
    from searche1.ofsd.phase import run_ofsd_phase
    from searche1.retrieval.config import make_retriever

    device = resolve_device(cfg.model.device)
    model_cfg = replace(cfg.model, device=rank_device(device) if dist.enabled else device)
    import torch

    torch.manual_seed(seed)  # a LoRA adapter's initialisation (the same on every rank)
    model, tok = load_policy(model_cfg, trainable=True)
    retriever = make_retriever(cfg.retrieval)
    questions = [q for f in cfg.data.train for q in load_qa(f)]
    pdir.mkdir(parents=True, exist_ok=True)
    from searche1.models import resolve_model_path
    from searche1.rollout.factory import make_engine

    full = cfg.ofsd.sharding == "full" and dist.enabled  # FSDP; LoRA / vllm-server refused by validate()
    # the GRPO phases' sampler: the run's vLLM engine, or HF on a bf16 copy where bf16 is native (the trained
    # weights are fp32), else the policy itself; under FSDP an unsharded copy, made before the weights are sharded
    engine, sync, _ = make_engine(cfg.rollout, model, tok, retriever,
                                  model_path=resolve_model_path(model_cfg.name_or_path),
                                  sync_dir=pdir / f"vllm-sync-rank{dist.rank}", device=str(model_cfg.device),
                                  seed=seed * 1000 + dist.rank, copy=full, dist=dist)
    sync()  # a reused colocated engine (or a server) holds the previous phase's weights
    shard = None
    if full:
        from searche1.sharding import gather_dtype, shard_model
        from searche1.train import use_bf16

        dtype = gather_dtype(cfg.grpo.fsdp_param_dtype, use_bf16(cfg.ofsd.bf16, str(model_cfg.device)))
        shard = lambda m: shard_model(m, dist, str(model_cfg.device), param_dtype=dtype)  # noqa: E731
    metrics = run_ofsd_phase(model, tok, retriever, questions, cfg.ofsd, cfg.rollout, pdir / "work", seed=seed,
                             progress=progress, episode_reward=episode_reward, dist=dist, engine=engine,
                             before_training=shard, teacher_source=sampler_copy(engine, model))
    from searche1.sharding import full_model_state, is_sharded

    state = full_model_state(model) if is_sharded(model) else None  # every rank takes part in the gather
    if dist.is_main:
        with atomic_dir(pdir / "model", overwrite=True) as tmp:
            save_policy(model, tok, tmp, state_dict=state)  # HF layout; LoRA merged
        write_json(pdir / "metrics.json", metrics)
    dist.barrier()
    return pdir / "model", metrics
