"""Metrics sinks: JSONL always (one object per step), TensorBoard or Weights & Biases when asked.

Keys are namespaced (``reward/em``, ``rollout/searches``, ``loss/policy``, ``time/rollout_s``). The JSONL file is
appended and flushed every step, so a killed run keeps every step it finished; on resume, lines of steps after the
checkpoint are dropped first so no step is ever logged twice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

Sink = Literal["tensorboard", "wandb"]


class MetricsLogger:
    def __init__(self, run_dir: str | Path, sinks: list[str] | tuple[str, ...] = (), run_name: str | None = None,
                 config: dict | None = None, resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            self._truncate_after(resume_step)
        self._f = open(self.path, "a", encoding="utf-8")
        self._tb = self._wandb = None
        if "tensorboard" in sinks:
            from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if "wandb" in sinks:
            import wandb

            self._wandb = wandb.init(name=run_name, config=config, resume="allow")

    def _truncate_after(self, step: int) -> None:
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", -1) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        self.path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")

    def log(self, step: int, metrics: dict) -> None:
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in metrics.items()}
        self._f.write(json.dumps({"step": step, **clean}) + "\n")
        self._f.flush()
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
