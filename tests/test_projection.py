"""The paper-scale projection's arithmetic (benchmarks/projection.py) against a hand computation, and its plan."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from projection import Costs, Plan, plan_from_config, project  # noqa: E402


def test_project_matches_a_hand_computation():
    c = Costs(prefill_tps=1000.0, decode_tps=100.0, forward_tps=2000.0, train_tps=500.0)
    p = Plan(grpo_steps=10, questions_per_step=4, group_size=5, ppo_epochs=1, ofsd_questions=20, ofsd_samples=5,
             ofsd_epochs=2, pair_rate=0.5, prompt_tokens=200, policy_tokens=100, retrieved_tokens=300)
    h = project(c, p, gpus=2)
    # one episode: 500 prefill tokens / 1000 + 100 decoded / 100 = 1.5 s; sequence = 600 tokens
    assert h["grpo_rollout_h"] == pytest.approx(200 * 1.5 / 2 / 3600)
    assert h["grpo_rescore_h"] == 0  # one PPO epoch: the loss forward gives the "old" log-probs
    assert h["grpo_train_h"] == pytest.approx(200 * 600 / 500 / 2 / 3600)
    assert h["ofsd_rollout_h"] == pytest.approx(100 * 1.5 / 2 / 3600)
    assert h["ofsd_teacher_h"] == pytest.approx(10 * 900 / 2000 / 2 / 3600)
    assert h["ofsd_train_h"] == pytest.approx(10 * 600 * 2 / 500 / 2 / 3600)
    assert h["round_h"] == pytest.approx(h["grpo_h"] + h["ofsd_h"])
    assert h["grpo_step_s"] == pytest.approx(h["grpo_h"] * 3600 / 10)
    assert project(c, p, gpus=4)["round_h"] == pytest.approx(h["round_h"] / 2)  # linear scaling, as documented
    p.ppo_epochs = 2  # a re-scoring pass over every sequence, then two training passes
    h2 = project(c, p, gpus=2)
    assert h2["grpo_rescore_h"] == pytest.approx(200 * 600 / 2000 / 2 / 3600)
    assert h2["grpo_train_h"] == pytest.approx(2 * h["grpo_train_h"])


def test_plan_reads_the_paper_config():
    class A:
        pair_rate, prompt_tokens, policy_tokens, searches = 0.3, 250, 300, 2

    root = Path(__file__).resolve().parents[1]
    p = plan_from_config(root / "configs" / "paper-qwen2.5-3b.yaml", A)
    assert (p.questions_per_step, p.group_size, p.grpo_steps) == (512, 5, 200)
    from searche1.config import load_config
    from searche1.pipeline import PipelineConfig

    cfg = load_config(PipelineConfig, root / "configs" / "paper-qwen2.5-3b.yaml")
    assert p.retrieved_tokens == 2 * cfg.rollout.topk * cfg.rollout.max_doc_tokens > 0
    assert (p.ofsd_questions, p.ofsd_samples) == (cfg.ofsd.questions, cfg.ofsd.samples_per_question)
