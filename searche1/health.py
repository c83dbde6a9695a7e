"""Run health: collapse detection on the valid-format rate and the reward (none of the peer systems has it).

A metric *collapses* when its value stays below ``drop`` × its recent level (the mean of the previous ``window``
steps) for ``patience`` consecutive steps, and that recent level was meaningful (above ``min_level``). The trainer
flags every step in collapse (``health/collapse``), warns once when a collapse begins, and with ``rollback_on_collapse`` reloads the last good checkpoint and multiplies the learning rate by
``lr_factor``. The last good checkpoint is the newest one saved before the weights that sampled the first low step:
step ``s - streak - 1`` or older, where step ``s`` is the collapse's and ``streak`` its low steps so far (a step's
rollouts are sampled with the weights of the step before it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from searche1.errors import ConfigError


@dataclass
class HealthConfig:
    watch: list[str] = field(default_factory=lambda: ["rollout/valid_format", "reward/em"],
                             metadata={"help": "metrics watched for collapse"})
    window: int = field(default=10, metadata={"help": "steps that define the recent level"})
    drop: float = field(default=0.5, metadata={"help": "collapse when below drop × recent level"})
    patience: int = field(default=3, metadata={"help": "consecutive low steps before acting"})
    min_level: float = field(default=0.05, metadata={"help": "ignore metrics whose recent level is below this"})
    rollback_on_collapse: bool = field(default=False, metadata={"help": "reload the last good checkpoint"})
    lr_factor: float = field(default=0.5, metadata={"help": "learning-rate multiplier after a rollback"})

    def validate(self) -> None:
        if not 0 < self.drop < 1:
            raise ConfigError("drop: must be in (0, 1)")
        if self.window < 1 or self.patience < 1:
            raise ConfigError("window/patience: must be >= 1")
        if not 0 < self.lr_factor <= 1:
            raise ConfigError("lr_factor: must be in (0, 1]")


class CollapseDetector:
    def __init__(self, cfg: HealthConfig) -> None:
        self.cfg = cfg
        self.history = {k: deque(maxlen=cfg.window) for k in cfg.watch}
        self.low = {k: 0 for k in cfg.watch}

    def update(self, metrics: dict) -> list[str]:
        """Feed one step's metrics; returns the names of metrics in collapse (low for ``patience`` steps or more)."""
        collapsed = []
        for k in self.cfg.watch:
            if k not in metrics:
                continue
            v = float(metrics[k])
            hist = self.history[k]
            level = sum(hist) / len(hist) if len(hist) == hist.maxlen else None
            if level is not None and level >= self.cfg.min_level and v < self.cfg.drop * level:
                self.low[k] += 1
                if self.low[k] >= self.cfg.patience:
                    collapsed.append(k)
                continue  # low values do not lower the reference level
            self.low[k] = 0
            hist.append(v)
        return collapsed

    def just_collapsed(self, names: list[str]) -> list[str]:
        """Those of ``names`` (from :meth:`update`) whose collapse began this step: a metric that stays low stays
        collapsed, and is returned by ``update`` every step, but is new only once."""
        return [k for k in names if self.low[k] == self.cfg.patience]

    def streak(self, names: list[str]) -> int:
        """The longest current run of low steps among ``names``."""
        return max((self.low[k] for k in names), default=0)

    def reset(self) -> None:
        for k in self.low:
            self.low[k] = 0

    def state_dict(self) -> dict:
        return {"history": {k: list(v) for k, v in self.history.items()}, "low": dict(self.low)}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.get("history", {}).items():
            if k in self.history:
                self.history[k].extend(v)
        self.low.update({k: v for k, v in state.get("low", {}).items() if k in self.low})
