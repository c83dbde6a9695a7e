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
        from searche1.io import atomic_write_text

        atomic_write_text(self.path, "".join(k + "\n" for k in keep))  # a kill here keeps the old file whole

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


class LossStats:
    """A step's loss statistics, accumulated over micro-batches, PPO epochs and ranks by their kind: per-token means
    (``loss/clip_frac*``, ``loss/ratio_mean``, ``loss/approx_kl``, ``loss/kl_ref_token_mean``, ``loss/is_weight_mean``,
    ``loss/is_capped_frac``) are weighted by each micro-batch's policy tokens; ``loss/ratio_max`` and
    ``loss/is_ratio_max`` are maxima; parts of the step's loss (``loss/kl_ref``, already
    divided by the step's normaliser) and ``loss/num_tokens`` are summed over micro-batches and ranks. Over PPO
    epochs every kind is the mean of the epochs. ``loss/policy`` is left to the caller (summed like ``loss/kl_ref``).
    """

    SUMMED = frozenset({"loss/kl_ref", "loss/num_tokens"})
    MAXED = frozenset({"loss/ratio_max", "loss/is_ratio_max"})

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.tokens = 0.0
        self.epochs = 0

    def add(self, m: dict) -> None:
        """One micro-batch's metrics (``loss/num_tokens``: its policy tokens)."""
        n = float(m.get("loss/num_tokens", 0.0))
        self.tokens += n
        for k, v in m.items():
            if k == "loss/policy":
                continue
            v = float(v)
            if k in self.MAXED:
                self.sums[k] = max(self.sums.get(k, v), v)
            else:
                self.sums[k] = self.sums.get(k, 0.0) + (v if k in self.SUMMED else v * n)

    def state(self) -> tuple[dict[str, float], float, int]:
        return dict(self.sums), self.tokens, self.epochs

    @classmethod
    def merge(cls, states: list[tuple[dict[str, float], float, int]]) -> dict[str, float]:
        """The step's statistics from every rank's :meth:`state` (ranks run the same number of epochs)."""
        tokens = sum(t for _, t, _ in states)
        epochs = max([e for *_, e in states] + [1])
        out: dict[str, float] = {}
        for k in sorted({k for s, _, _ in states for k in s}):
            vals = [s[k] for s, _, _ in states if k in s]
            if k in cls.MAXED:
                out[k] = max(vals)
            elif k in cls.SUMMED:
                out[k] = sum(vals) / epochs
            else:
                out[k] = sum(vals) / tokens if tokens else 0.0
        return out
