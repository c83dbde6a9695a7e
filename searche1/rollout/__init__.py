"""Search-agent rollouts: episode records, stop reasons and the engines that produce them."""

from searche1.rollout.types import Episode, RolloutConfig, StopReason

__all__ = ["Episode", "RolloutConfig", "StopReason"]
