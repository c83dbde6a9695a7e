"""vLLM's sampler log-probs: asked for a share of episodes (``rollout.vllm_logprobs``), the same tokens either way,
the trainer's mismatch over the episodes that have them."""

from __future__ import annotations

import math
import types

import pytest
import torch

from searche1.config import ConfigError
from searche1.rollout.types import DEFAULT_VLLM_LOGPROB_FRACTION, RolloutConfig, logprobs_wanted
from searche1.rollout.vllm_engine import VLLMEngine, VLLMServerClient

from toy_retriever import OverlapRetriever
from vllm_fakes import FakeLLM, ALL_LP, examples, mock_server, RandomLLM
from vllm_fakes import fake_vllm, tok  # noqa: F401 (fixtures; fake_vllm is autouse)


@pytest.mark.parametrize("with_token_ids", [False, True])
def test_without_vllm_logprobs_same_tokens_zero_logprobs(tok, with_token_ids):
    """rollout.vllm_logprobs: false asks vLLM (colocated or served) for no log-probs: the same episodes, with zero
    log-probs for the trainer to re-score; a server that cannot return token ids is refused with the fix."""
    qs = ["What is the capital of France?", "Capital of Germany?"]
    scripts = {qs[0]: [" <search> capital of France </search>", " <answer> Paris </answer>"],
               qs[1]: [" <answer> Berlin </answer>"]}
    with_lp = VLLMEngine(FakeLLM(tok, scripts), tok, OverlapRetriever(), ALL_LP).run(examples(qs), seed=1)
    llm = FakeLLM(tok, scripts)
    cfg = RolloutConfig(vllm_logprobs=False)
    without = VLLMEngine(llm, tok, OverlapRetriever(), cfg).run(examples(qs), seed=1)
    assert all(sp.logprobs is None for *_, sp in llm.requests)
    fields = ("response_ids", "policy_mask", "queries", "answer", "stop_reason", "turns")
    assert [[getattr(e, f) for f in fields] for e in without] == [[getattr(e, f) for f in fields] for e in with_lp]
    assert all(lp == 0.0 for e in without for lp in e.logprobs) and any(lp < 0 for e in with_lp for lp in e.logprobs)
    bodies: list[dict] = []
    client = VLLMServerClient("localhost:8000", transport=mock_server(tok, scripts, with_token_ids, bodies))
    if not with_token_ids:
        with pytest.raises(RuntimeError, match="vllm_logprobs: true"):
            VLLMEngine(client, tok, OverlapRetriever(), cfg).run(examples(qs), seed=1)
        return
    served = VLLMEngine(client, tok, OverlapRetriever(), cfg).run(examples(qs), seed=1)
    assert [[getattr(e, f) for f in fields + ("logprobs",)] for e in served] == \
        [[getattr(e, f) for f in fields + ("logprobs",)] for e in without]
    assert bodies[0]["logprobs"] is None


def test_vllm_logprobs_config():
    for frac in (False, 0.5):
        with pytest.raises(ConfigError, match="leaves episodes without old log-probs"):
            RolloutConfig(engine="vllm", vllm_logprobs=frac, recompute_logprobs=False).validate()
    with pytest.raises(ConfigError, match="not a fraction of episodes"):
        RolloutConfig(vllm_logprobs=1.5).validate()
    RolloutConfig(engine="vllm", vllm_logprobs=False).validate()
    RolloutConfig(engine="hf", vllm_logprobs=False, recompute_logprobs=False).validate()  # no vLLM: no matter
    # unset: 1 in 8 while the trainer re-scores (the vLLM default), all when it does not
    assert RolloutConfig(engine="vllm").vllm_logprob_fraction() == DEFAULT_VLLM_LOGPROB_FRACTION == 0.125
    assert RolloutConfig(engine="vllm", recompute_logprobs=False).vllm_logprob_fraction() == 1.0
    assert [RolloutConfig(vllm_logprobs=v).vllm_logprob_fraction() for v in (True, False, 0.25)] == [1.0, 0.0, 0.25]
    from searche1.config import from_dict
    assert from_dict(RolloutConfig, {"vllm_logprobs": True}).vllm_logprobs is True  # YAML true/false still read
    assert from_dict(RolloutConfig, {"vllm_logprobs": 0.25}).vllm_logprob_fraction() == 0.25


@pytest.mark.parametrize("frac", [0.0, 0.125, 1 / 3, 0.5, 0.7, 1.0])
def test_logprobs_wanted_spreads_exactly(frac):
    """Exactly floor(n * frac) of the first n global indices, evenly: every window of k indices holds
    floor or ceil of k * frac; a rank's episodes are chosen by global index, so any split agrees."""
    chosen = [logprobs_wanted(i, frac) for i in range(200)]
    for n in range(201):
        assert sum(chosen[:n]) == int(n * frac + 1e-9)
    for k in (5, 8):
        assert all(abs(sum(chosen[i:i + k]) - k * frac) < 1 for i in range(200 - k))


def test_sampled_logprobs_only_for_chosen_episodes(tok):
    """Unset vllm_logprobs (1 in 8): vLLM (colocated or served) is asked for log-probs only for episodes 7, 15, ...
    of the global index; their records carry them, the others zeros and sampler_logprobs False; the tokens are the
    same as with log-probs everywhere."""
    qs = [f"Capital of country {k}?" for k in range(16)]
    scripts = {q: [" <search> capital </search>", " <answer> x </answer>"] for q in qs}
    every = VLLMEngine(FakeLLM(tok, scripts), tok, OverlapRetriever(), ALL_LP).run(examples(qs), seed=3)
    llm = FakeLLM(tok, scripts)
    some = VLLMEngine(llm, tok, OverlapRetriever(), RolloutConfig()).run(examples(qs), seed=3)
    assert [e.sampler_logprobs for e in some] == [i % 8 == 7 for i in range(16)]
    assert {(key, sp.logprobs) for key, _, _, sp in llm.requests} == \
        {(f"Question: {q}", 1 if i % 8 == 7 else None) for i, q in enumerate(qs)}
    for a, b in zip(every, some):
        assert (a.response_ids, a.policy_mask, a.answer) == (b.response_ids, b.policy_mask, b.answer)
        assert b.logprobs == (a.logprobs if b.sampler_logprobs else [0.0] * len(a.logprobs))
    assert all(e.sampler_logprobs for e in every)
    # a rank holding episodes 4..11 (first_index=4) chooses by global index: only episode 7
    part = VLLMEngine(FakeLLM(tok, scripts), tok, OverlapRetriever()).run(examples(qs)[4:12], seed=3, first_index=4)
    assert [e.sampler_logprobs for e in part] == [i == 7 for i in range(4, 12)]
    bodies: list[dict] = []
    client = VLLMServerClient("localhost:8000", transport=mock_server(tok, scripts, True, bodies))
    served = VLLMEngine(client, tok, OverlapRetriever()).run(examples(qs), seed=3)
    assert [(e.response_ids, e.logprobs, e.sampler_logprobs) for e in served] == \
        [(e.response_ids, e.logprobs, e.sampler_logprobs) for e in some]
    assert sorted(b["logprobs"] is not None for b in bodies) == [False] * 28 + [True] * 4  # 2 episodes x 2 turns


def test_rescore_gap_counts_only_sampler_rows():
    """The mismatch is over the policy tokens of rows whose sampler returned log-probs; the re-scored log-probs are
    the trainer's for every row."""
    from searche1.scoring import micro_batches
    from searche1.old_logprobs import rescore

    V = 7
    micros = micro_batches([[0]] * 3, 2, share=False)  # rows 0-1, then row 2

    class Uniform(torch.nn.Module):  # logits 0: every log-prob is -log V
        def forward(self, input_ids, attention_mask):
            return types.SimpleNamespace(logits=torch.zeros(*input_ids.shape, V))

    ids = torch.randint(0, V, (3, 6))
    attn = torch.ones_like(ids)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0]], dtype=torch.float32)[:, 1:]
    old = torch.tensor([[-1.0] * 5, [0.0] * 5, [-2.0] * 5]) * mask
    has = torch.tensor([True, False, True])
    new, (gap_sum, n) = rescore(Uniform(), ids, attn, mask, old, micros, RolloutConfig(), "cpu", False, has)
    lv = math.log(V)
    assert torch.allclose(new, -lv * mask)
    assert n == 3 + 2 and gap_sum == pytest.approx(3 * abs(lv - 1) + 2 * abs(lv - 2), rel=1e-5)
    assert rescore(Uniform(), ids, attn, mask, old, micros, RolloutConfig(), "cpu", False, has | True)[1][1] == 10
    assert rescore(Uniform(), ids, attn, mask, old, micros, RolloutConfig(), "cpu", False, has & False)[1] == (0.0, 0.0)


def test_grpo_without_vllm_logprobs_rescored_and_no_mismatch(fake_vllm, tmp_path):
    """With no sampler log-probs the trainer re-scores the samples and logs no mismatch; with them (all, or half
    the episodes) it logs one, over the episodes that have them."""
    from test_train import make_config, parity_reward

    from searche1.metrics import read_metrics
    from searche1.train import run_grpo

    fake_vllm.LLM = lambda **kw: RandomLLM(vocab=550)
    gaps = {}
    for flag in (False, 0.5, True):
        cfg = make_config(tmp_path, steps=1)
        cfg.rollout.engine, cfg.rollout.vllm_logprobs = "vllm", flag
        (row,) = read_metrics(run_grpo(cfg, tmp_path / f"lp-{flag}", progress=False, episode_reward=parity_reward))
        assert row["train/kept_rollouts"] > 0 and ("rollout/logprob_mismatch" in row) == bool(flag)
        gaps[flag] = row.get("rollout/logprob_mismatch")
    # the fake's log-probs are all -1 and the model's far lower: the zeros of unsampled episodes would add to the gap
    assert gaps[0.5] == pytest.approx(gaps[True], rel=0.03)  # 5.41 vs 5.44; with those zeros it would be ~5.9


def test_every_ppo_epoch_uses_the_rescored_old_logprobs(fake_vllm, tmp_path):
    """grpo.ppo_epochs: 2 with vLLM samples (no sampler log-probs for most episodes): both epochs take the ratio
    against the trainer's re-scored log-probs, so it stays near 1 (with the sampler's zeros it falls to ~0 in the
    second epoch: a mean near 0.5)."""
    from test_train import make_config, parity_reward

    from searche1.metrics import read_metrics
    from searche1.train import run_grpo

    fake_vllm.LLM = lambda **kw: RandomLLM(vocab=550)
    cfg = make_config(tmp_path, steps=1, ppo_epochs=2)
    cfg.rollout.engine, cfg.rollout.vllm_logprobs = "vllm", False
    (row,) = read_metrics(run_grpo(cfg, tmp_path / "run", progress=False, episode_reward=parity_reward))
    assert row["train/kept_rollouts"] > 0 and 0.9 < row["loss/ratio_mean"] < 1.1
    assert row["loss/approx_kl"] < 0.05  # against the zeros: log-ratios of -6 and below, a k3 KL of 5 and more


def test_truncated_importance_weights_get_every_sampler_logprob(fake_vllm, tmp_path):
    """grpo.tis_cap with a vLLM engine: an unset rollout.vllm_logprobs asks vLLM for every episode's log-probs, and
    the weights use them (the fake's are all -1, far above the model's: every weight is far below 1, none capped);
    episodes without them stop the step with the fix."""
    from test_train import make_config, parity_reward

    from searche1.metrics import read_metrics
    from searche1.train import run_grpo

    fake_vllm.LLM = lambda **kw: RandomLLM(vocab=550)
    cfg = make_config(tmp_path, steps=1, tis_cap=2.0)
    cfg.rollout.engine = "vllm"
    cfg.validate()
    assert cfg.rollout.vllm_logprob_fraction() == 1.0
    (row,) = read_metrics(run_grpo(cfg, tmp_path / "run", progress=False, episode_reward=parity_reward))
    assert row["train/kept_rollouts"] > 0 and row["loss/is_capped_frac"] == 0.0
    assert 0 < row["loss/is_weight_mean"] < 0.1  # exp(trainer log-prob + 1), the trainer's near -log(550)
    cfg.rollout.vllm_logprobs = 0.5  # set after validation: the trainer itself refuses
    with pytest.raises(ConfigError, match="some episodes came without the sampler's log-probs"):
        run_grpo(cfg, tmp_path / "run2", progress=False, episode_reward=parity_reward)
