"""The self-evolution schedule (GRPO → OFSD → GRPO) on a tiny model: phases chain, record, and resume by phase."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import TESTS, make_config, parity_reward

from searche1.config import ConfigError, from_dict, to_dict
from searche1.pipeline import PipelineConfig, run_pipeline


def pipeline_config(root: Path) -> PipelineConfig:
    base = to_dict(make_config(root, steps=2, save_every=2))
    base["schedule"] = ["grpo", "ofsd", "grpo"]
    base["ofsd"] = {"questions": 3, "samples_per_question": 3, "epochs": 1, "lr": 1e-3, "micro_batch_size": 2}
    return from_dict(PipelineConfig, base)


def final_weights(path: Path) -> dict:
    return load_file(str(Path(path) / "model.safetensors"))


def test_schedule_runs_phases_in_order(tmp_path):
    cfg = pipeline_config(tmp_path)
    final = run_pipeline(cfg, tmp_path / "run", progress=False, episode_reward=parity_reward)
    state = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert [p["kind"] for p in state["phases"]] == ["grpo", "ofsd", "grpo"]
    assert state["phases"][1]["model"].endswith("phase-01-ofsd/model")
    assert "ofsd/pairs" in state["phases"][1]["metrics"]
    # phase 2 started from the OFSD output
    cfg2 = json.loads((tmp_path / "run" / "phase-02-grpo" / "config.json").read_text())
    assert cfg2["model"]["name_or_path"] == str(tmp_path / "run" / state["phases"][1]["model"])
    assert Path(final) == tmp_path / "run" / state["phases"][2]["model"] and final_weights(final)
    # round 2 goes on through the questions where round 1 stopped (2 steps x 2 questions each), not from the start
    assert [p["data_cursor"] for p in state["phases"]] == [4, 4, 8]
    assert json.loads((Path(final) / "trainer_state.json").read_text())["cursor"] == 8
    with pytest.raises(FileExistsError, match="--resume"):
        run_pipeline(cfg, tmp_path / "run", progress=False)


SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_pipeline import pipeline_config
    from test_train import parity_reward
    from searche1.pipeline import run_pipeline
    run_pipeline(pipeline_config(Path({root!r})), Path({out!r}), resume={resume}, progress=False,
                 episode_reward=parity_reward)
""")


def test_killed_pipeline_resumes_by_phase(tmp_path):
    pipeline_config(tmp_path)
    out = tmp_path / "run"

    def launch(resume, fault):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("SEARCHE1_FAULT", None)
        if fault:
            env["SEARCHE1_FAULT"] = fault
        code = SCRIPT.format(tests=str(TESTS), root=str(tmp_path), out=str(out), resume=resume)
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)

    killed = launch(False, "phase2:start")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert len(json.loads((out / "pipeline.json").read_text())["phases"]) == 2
    done = launch(True, None)
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads((out / "pipeline.json").read_text())
    assert [p["index"] for p in state["phases"]] == [0, 1, 2]
    ref = run_pipeline(pipeline_config(tmp_path), tmp_path / "ref", progress=False, episode_reward=parity_reward)
    a, b = final_weights(ref), final_weights(out / state["phases"][2]["model"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)


def test_resume_from_another_working_folder_after_a_move(tmp_path, monkeypatch):
    """pipeline.json recorded phase outputs relative to the working folder (`--out runs/x` gave
    'runs/x/phase-00-grpo/...'), so a resume from elsewhere, or of a moved run, failed: 'no such model folder'."""
    import shutil

    cfg = pipeline_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    run_pipeline(cfg, Path("run"), progress=False, episode_reward=parity_reward)
    state = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert state["phases"][1]["model"] == "phase-01-ofsd/model"
    want = final_weights(tmp_path / "run" / state["phases"][2]["model"])
    shutil.move(tmp_path / "run", tmp_path / "moved")  # and forget the last phase: the resume must run it
    state["phases"] = state["phases"][:2]
    (tmp_path / "moved" / "pipeline.json").write_text(json.dumps(state))
    shutil.rmtree(tmp_path / "moved" / "phase-02-grpo")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    final = run_pipeline(cfg, Path("../moved"), resume=True, progress=False, episode_reward=parity_reward)
    got = final_weights(final)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-5)


def test_recorded_paths_of_earlier_versions_still_resolve(tmp_path, monkeypatch):
    from searche1.pipeline import _recorded_path

    (tmp_path / "runs" / "x" / "phase-00-grpo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    out = Path("runs/x")
    assert _recorded_path(out, "phase-00-grpo") == out / "phase-00-grpo"
    assert _recorded_path(out, "runs/x/phase-00-grpo") == Path("runs/x/phase-00-grpo")  # working-folder relative
    assert _recorded_path(out, str(tmp_path / "m")) == tmp_path / "m"


def test_schedule_validation():
    with pytest.raises(ConfigError, match="schedule: 'sft' is not a phase; valid phases: grpo, ofsd$"):
        from_dict(PipelineConfig, {"data": {"train": ["x"]}, "schedule": ["grpo", "sft"]})
    with pytest.raises(ConfigError, match=r"a list is written \[grpo, ofsd\]"):  # --set schedule=grpo,ofsd
        from_dict(PipelineConfig, {"data": {"train": ["x"]}, "schedule": "grpo,ofsd"})


@pytest.mark.parametrize("key, value, needle", [
    ("advantage", "foo", "grpo.advantage: unknown advantage 'foo'"),
    ("loss_agg", "sum", "grpo.loss_agg: unknown policy loss 'sum'"),
    ("reward", "acc", "grpo.reward: unknown reward 'acc'"),
])
def test_grpo_names_fail_when_the_config_loads(key, value, needle):
    """A mistyped registry name failed only once training started, after the model loaded and --out got a
    config.json and an empty metrics.jsonl, so the corrected command then refused the folder ("already holds a
    run"). It now fails with the config, a GRPO-only one too."""
    from searche1.train import TrainConfig

    for cls in (PipelineConfig, TrainConfig):
        with pytest.raises(ConfigError, match=needle):
            from_dict(cls, {"data": {"train": ["x"]}, "grpo": {key: value}})


def test_gradient_checkpointing_gives_the_same_pipeline(tmp_path):
    """model.gradient_checkpointing only trades compute for memory: GRPO → OFSD → GRPO ends with the same weights
    (the OFSD phase trains with it too; its rollouts and teacher pass run in eval mode with the KV cache)."""
    from dataclasses import replace

    cfg = pipeline_config(tmp_path)
    cfg.grpo = replace(cfg.grpo, share_prompt=False)  # checkpointing turns prompt sharing off: compare alike
    cfg.ofsd = replace(cfg.ofsd, share_prompt=False)
    plain = run_pipeline(cfg, tmp_path / "plain", progress=False, episode_reward=parity_reward)
    ckpt = run_pipeline(replace(cfg, model=replace(cfg.model, gradient_checkpointing=True)), tmp_path / "ckpt",
                        progress=False, episode_reward=parity_reward)
    wa, wb = final_weights(plain), final_weights(ckpt)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-5, atol=1e-6), k
    state = json.loads((tmp_path / "ckpt" / "pipeline.json").read_text())
    assert state["phases"][1]["metrics"]["ofsd/pairs"] > 0  # the OFSD phase did train


@pytest.mark.parametrize("kl_reference", ["initial", "round_start"])
def test_kl_reference_of_later_rounds(tmp_path, monkeypatch, kl_reference):
    """With a KL penalty, round 2's reference is the pipeline's starting model (grpo.kl_reference: initial, as the
    help of grpo.kl_beta says), not the OFSD output it starts from, unless round_start is asked for."""
    import searche1.models

    cfg = pipeline_config(tmp_path)
    cfg.grpo = from_dict(type(cfg.grpo), {**to_dict(cfg.grpo), "kl_beta": 0.01, "kl_reference": kl_reference})
    cfg.schedule = ["grpo", "ofsd", "grpo"]
    loaded, real = [], searche1.models.load_policy

    def spy(model_cfg, trainable=False):
        loaded.append((str(model_cfg.name_or_path), trainable))
        return real(model_cfg, trainable=trainable)

    monkeypatch.setattr(searche1.models, "load_policy", spy)
    run_pipeline(cfg, tmp_path / "run", progress=False, episode_reward=parity_reward)
    state = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    refs = [path for path, trainable in loaded if not trainable]
    start = str(tmp_path / "run" / state["phases"][1]["model"]) if kl_reference == "round_start" \
        else cfg.model.name_or_path
    assert refs[0] == cfg.model.name_or_path and refs[-1] == start


@pytest.mark.parametrize("native", ["0", "1"])
def test_ofsd_phase_trains_fp32_weights_and_samples_in_bf16_where_native(tmp_path, monkeypatch, native):
    """An OFSD phase under model.dtype auto: the policy it trains has fp32 weights; where bf16 is native it samples
    from a bf16 copy holding the same weights (as GRPO does), else from the policy itself."""
    import searche1.ofsd.phase
    from searche1.distributed import Dist
    from searche1.pipeline import _run_ofsd

    monkeypatch.setenv("SEARCHE1_CPU_BF16", native)
    seen = {}

    def phase(model, tok, retriever, questions, cfg, rollout_cfg, work, *, engine, **kw):
        seen.update(model=model, sampler=engine.model)
        return {"ofsd/pairs": 0.0}

    monkeypatch.setattr(searche1.ofsd.phase, "run_ofsd_phase", phase)
    cfg = pipeline_config(tmp_path)
    cfg.model.dtype = "auto"
    _run_ofsd(cfg, tmp_path / "ofsd", seed=0, progress=False, episode_reward=parity_reward, dist=Dist())
    policy, sampler = seen["model"], seen["sampler"]
    assert {p.dtype for p in policy.parameters()} == {torch.float32}
    if native == "1":
        assert sampler is not policy and {p.dtype for p in sampler.parameters()} == {torch.bfloat16}
        assert all(torch.equal(s, p.to(torch.bfloat16)) for s, p in zip(sampler.parameters(), policy.parameters()))
    else:
        assert sampler is policy
