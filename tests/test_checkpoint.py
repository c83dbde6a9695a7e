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


def test_a_run_folder_given_as_a_model_names_its_newest_model(tmp_path):
    """`searche1 eval --model RUN` (or model.name_or_path: RUN) was transformers' "Unrecognized model in RUN.
    Should have a `model_type` key in its config.json"."""
    import json

    from typer.testing import CliRunner

    from searche1.checkpoint import refuse_run_folder
    from searche1.cli import app

    for step in (1, 2):
        (tmp_path / "grpo" / "checkpoints" / f"step-00000{step}").mkdir(parents=True)
        (tmp_path / "grpo" / "checkpoints" / f"step-00000{step}" / "trainer_state.json").write_text("{}")
    with pytest.raises(ConfigError, match="--model .*grpo: is a training run folder, not a model .*step-000002"):
        refuse_run_folder(tmp_path / "grpo", "--model")
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "pipeline.json").write_text(json.dumps({"phases": [{"model": "phase-01-ofsd/model"}]}))
    with pytest.raises(ConfigError, match="fix: --model .*pipe/phase-01-ofsd/model"):
        refuse_run_folder(tmp_path / "pipe", "--model")
    refuse_run_folder(tmp_path / "pipe" / "phase-01-ofsd", "--model")  # not a run: left to the model loader
    data = tmp_path / "dev.jsonl"
    data.write_text(json.dumps({"question": "q?", "golden_answers": ["a"]}) + "\n")
    r = CliRunner().invoke(app, ["eval", "--model", str(tmp_path / "grpo"), "--data", str(data), "--mode", "direct"])
    newest = str(tmp_path / "grpo" / "checkpoints" / "step-000002")
    assert r.exit_code == 2 and newest in r.output  # the whole path on one line (no wrap inside it): copyable


def test_resolve_model_path_refuses_a_run_folder(tmp_path):
    """Every command that loads a model (warm-up, the OFSD CLI, library calls) gets the run-folder hint, not only
    eval and train: a run folder has a config.json (the run's), which passed for a model folder."""
    from searche1.models import resolve_model_path

    ckpt = tmp_path / "run" / "checkpoints" / "step-000003"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    (tmp_path / "run" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="is a training run folder, not a model .*step-000003"):
        resolve_model_path(str(tmp_path / "run"))
