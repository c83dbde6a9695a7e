"""searche1.checkpoint: errors of a resume whose config does not fit the checkpoint."""

from dataclasses import replace

import pytest
from test_train import make_config, parity_reward

from searche1.errors import ConfigError
from searche1.train import run_grpo


def test_resume_with_other_trainable_parameters_names_the_checkpoint_and_fix(tmp_path):
    """--resume after changing model.train_layers was torch's bare "loaded state dict contains a parameter group
    that doesn't match the size of optimizer's group"."""
    cfg = make_config(tmp_path, steps=1)
    run_grpo(cfg, tmp_path / "run", progress=False, episode_reward=parity_reward)
    more = replace(cfg, model=replace(cfg.model, train_layers=1), grpo=replace(cfg.grpo, steps=2))
    with pytest.raises(ConfigError, match="step-000001: its optimizer state does not fit") as e:
        run_grpo(more, tmp_path / "run", resume=True, progress=False, episode_reward=parity_reward)
    assert "model.train_layers" in str(e.value) and "model.name_or_path:" in str(e.value)
