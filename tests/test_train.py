"""GRPO loop on a tiny model: it trains, logs, checkpoints, resumes deterministically, and survives SIGKILL.

The tiny random policy never writes a correct answer, so EM would give all-zero advantages and no gradient; these
runs use an episode reward that depends on the sampled tokens (first sampled token id even → 1) instead.
"""

import json
import logging
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from searche1.checkpoint import list_checkpoints
from searche1.config import ConfigError, from_dict
from searche1.metrics import read_metrics
from searche1.rollout.types import Episode
from searche1.train import QuestionSampler, TrainConfig, episode_tensors, run_grpo

TESTS = Path(__file__).resolve().parent


def parity_reward(ep):
    r = float(ep.response_ids[0] % 2 == 0)
    return r, {"reward/em": r, "reward/f1": r}


def make_config(root: Path, **grpo) -> TrainConfig:
    """A tiny model folder, a BM25 index and a QA file under ``root`` (built once), and a 3-step config."""
    from tiny import PASSAGES, QUESTIONS, tiny_model, tiny_tokenizer

    from searche1.retrieval.index import build_index

    if not (root / "model").is_dir():
        tok = tiny_tokenizer()
        tiny_model(tok).save_pretrained(root / "model")
        tok.save_pretrained(root / "model")
        build_index(PASSAGES, root / "index", show_progress=False)
        with open(root / "train.jsonl", "w") as f:
            for i, (q, a) in enumerate(QUESTIONS):
                f.write(json.dumps({"id": str(i), "question": q, "golden_answers": [a]}) + "\n")
    return from_dict(TrainConfig, {
        "model": {"name_or_path": str(root / "model"), "dtype": "float32", "device": "cpu"},
        "retrieval": {"index": str(root / "index")},
        "rollout": {"max_turn_tokens": 9, "max_total_tokens": 400, "batch_size": 8, "max_searches": 1},
        "data": {"train": [str(root / "train.jsonl")]},
        "grpo": {"steps": 3, "questions_per_step": 2, "group_size": 3, "micro_batch_size": 2, "lr": 1e-3,
                 "warmup_steps": 1, "save_every": 1, "keep_last": 5, **grpo},
    })


def weights(ckpt: Path) -> dict:
    return load_file(str(ckpt / "model.safetensors"))


def test_sampler_is_deterministic_and_resumable():
    from searche1.data.types import QAExample

    qs = [QAExample(str(i), f"q{i}", ["a"]) for i in range(5)]
    a = QuestionSampler(qs, seed=1)
    first = [q.id for q in a.take(7)]
    b = QuestionSampler(qs, seed=1, cursor=3)
    assert [q.id for q in b.take(4)] == first[3:]
    assert sorted(first[:5]) == [str(i) for i in range(5)]  # an epoch is a permutation


def test_episode_tensors_align_mask_and_old_logprobs():
    ep = Episode("1", "q", ["a"], prompt_ids=[5, 6, 7], response_ids=[8, 9, 10, 11], policy_mask=[1, 1, 0, 1],
                 logprobs=[-0.1, -0.2, 0.0, -0.4])
    ids, attn, mask, old = episode_tensors([ep], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 9, 10, 11]]
    assert mask.tolist() == [[0, 0, 1, 1, 0, 1]]  # position t predicts ids[t+1]
    assert old[0].tolist() == pytest.approx([0, 0, -0.1, -0.2, 0, -0.4])


def test_grpo_trains_logs_and_checkpoints(tmp_path):
    cfg = make_config(tmp_path)
    out = run_grpo(cfg, tmp_path / "run", progress=False, episode_reward=parity_reward)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert any(r["grpo/zero_std_groups"] < 1 for r in rows)  # some groups carry signal
    for key in ("reward/em", "rollout/searches", "rollout/valid_format", "loss/policy", "grad/norm",
                "time/rollout_s", "time/train_s", "grpo/zero_std_groups"):
        assert key in rows[0]
    ckpts = list_checkpoints(out)
    assert [c.name for c in ckpts] == ["step-000001", "step-000002", "step-000003"]
    init = load_file(str(tmp_path / "model" / "model.safetensors"))
    last = weights(ckpts[-1])
    assert any(not torch.equal(init[k], last[k]) for k in init)  # the loss step moved the parameters
    with pytest.raises(FileExistsError, match="--resume"):
        run_grpo(cfg, out, progress=False, episode_reward=parity_reward)


def test_resume_matches_an_uninterrupted_run(tmp_path):
    cfg = make_config(tmp_path)
    full = run_grpo(cfg, tmp_path / "full", progress=False, episode_reward=parity_reward)
    part = tmp_path / "part"
    run_grpo(cfg, part, progress=False, stop_after=1, episode_reward=parity_reward)
    run_grpo(cfg, part, resume=True, progress=False, episode_reward=parity_reward)
    assert [r["step"] for r in read_metrics(part)] == [1, 2, 3]
    a, b = weights(list_checkpoints(full)[-1]), weights(list_checkpoints(part)[-1])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    ra, rb = read_metrics(full), read_metrics(part)
    assert [r["reward/em"] for r in ra] == [r["reward/em"] for r in rb]


SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_train import make_config, parity_reward
    from searche1.train import run_grpo
    from pathlib import Path
    run_grpo(make_config(Path({root!r})), Path({out!r}), resume={resume}, progress=False,
             episode_reward=parity_reward)
""")


@pytest.mark.parametrize("fault", ["step2:backward", "step2:mid_save", "step3:before_save"])
def test_sigkill_then_resume_is_consistent(tmp_path, fault):
    make_config(tmp_path)  # build assets once in this process
    out = tmp_path / "run"

    def launch(resume: bool, env_fault: str | None):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("SEARCHE1_FAULT", None)
        if env_fault:
            env["SEARCHE1_FAULT"] = env_fault
        code = SCRIPT.format(tests=str(TESTS), root=str(tmp_path), out=str(out), resume=resume)
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)

    killed = launch(False, fault)
    assert killed.returncode == -9, killed.stderr[-2000:]
    # only complete checkpoints are visible; the killed step's partial folder is hidden or gone
    names = [c.name for c in list_checkpoints(out)]
    assert names == ["step-000001"] or names == ["step-000001", "step-000002"]
    for c in list_checkpoints(out):
        assert (c / "trainer_state.json").is_file() and weights(c)
    done = launch(True, None)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]  # nothing repeated or skipped in the log
    ref = run_grpo(make_config(tmp_path), tmp_path / "ref", progress=False, episode_reward=parity_reward)
    a, b = weights(list_checkpoints(ref)[-1]), weights(list_checkpoints(out)[-1])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # stale temp folders cleaned


def test_config_errors():
    with pytest.raises(ConfigError, match="grpo.group_size: GRPO needs at least 2"):
        from_dict(TrainConfig, {"data": {"train": ["x.jsonl"]}, "grpo": {"group_size": 1}})
    with pytest.raises(ConfigError, match="data.dev_limit: must be >= 1"):
        from_dict(TrainConfig, {"data": {"dev_limit": 0}})
    with pytest.raises(ConfigError, match="sinks: unknown sink 'mlflow'"):
        from_dict(TrainConfig, {"data": {"train": ["x"]}, "sinks": ["mlflow"]})


def test_run_without_training_files_names_the_field(tmp_path):
    cfg = make_config(tmp_path)
    cfg.data.train = []
    with pytest.raises(ConfigError, match="data.train: give at least one training QA file"):
        run_grpo(cfg, tmp_path / "run", progress=False)


def test_train_command_runs_a_yaml_config(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from searche1.cli import app
    from searche1.config import to_dict

    cfg = to_dict(make_config(tmp_path))
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--config", str(path), "--out", str(tmp_path / "run"),
                            "--set", "grpo.steps=1", "--set", "grpo.reward=f1"])
    assert r.exit_code == 0, r.output
    assert [m["step"] for m in read_metrics(tmp_path / "run")] == [1]
    r = runner.invoke(app, ["train", "--config", str(path), "--out", str(tmp_path / "run2"), "--set", "grpo.lrr=1"])
    assert r.exit_code == 2 and "did you mean 'lr'" in r.output


def test_train_layers_freezes_everything_below(tmp_path):
    """train_layers=1: only the last decoder layer and the final norm move; embeddings and layer 0 stay exact."""
    cfg = make_config(tmp_path, steps=1)
    cfg.model.train_layers = 1
    out = run_grpo(cfg, tmp_path / "run", progress=False, episode_reward=parity_reward)
    init = load_file(str(tmp_path / "model" / "model.safetensors"))
    last = weights(list_checkpoints(out)[-1])
    moved = {k for k in init if not torch.equal(init[k], last[k])}
    assert moved and all(k.startswith(("model.layers.1.", "model.norm")) for k in moved)
    assert all(torch.equal(init[k], last[k]) for k in init if "layers.0." in k or "embed" in k)


def test_train_layers_config_errors(tmp_path):
    from searche1.models import ModelConfig, load_policy

    with pytest.raises(ConfigError, match="lora_r"):
        from_dict(ModelConfig, {"train_layers": 2, "lora_r": 4})
    cfg = make_config(tmp_path)
    with pytest.raises(ConfigError, match="3 > the model's 2 layers"):
        load_policy(ModelConfig(name_or_path=cfg.model.name_or_path, device="cpu", train_layers=3), trainable=True)


def test_dev_evaluation_before_during_and_after_training(tmp_path, capsys):
    cfg = make_config(tmp_path)
    cfg.data.dev = [tmp_path / "train.jsonl"]
    cfg.data.dev_limit = 2
    cfg.grpo.eval_every = 2
    out = run_grpo(cfg, tmp_path / "run", progress=True, episode_reward=parity_reward)
    assert capsys.readouterr().err.count("eval agent: 100%") == 3  # each evaluation has its own progress bar
    rows = read_metrics(out)
    assert [r["step"] for r in rows if "dev/em" in r] == [0, 2, 3]  # before, every 2 steps, after the last
    assert sorted(p.name for p in (out / "evals").glob("*.json")) == ["step-0.json", "step-2.json", "step-3.json"]
    assert sorted(p.name for p in (out / "evals").glob("*.samples.jsonl")) == [
        "step-0.samples.jsonl", "step-2.samples.jsonl", "step-3.samples.jsonl"]  # per question, for `compare`
    saved = json.loads((out / "evals" / "step-0.json").read_text())
    assert saved["average"]["em"] == rows[0]["dev/em"]


def test_recomputed_logprobs_match_the_hf_sampler(tmp_path):
    """rollout.recompute_logprobs re-scores the sampled tokens with the trainer (what the vLLM engines use); for the
    HF engine the sampler's log-probs are the trainer's, so the logged mismatch is at rounding level."""
    cfg = make_config(tmp_path, steps=1)
    cfg.rollout.recompute_logprobs = True
    rows = read_metrics(run_grpo(cfg, tmp_path / "run", progress=False, episode_reward=parity_reward))
    assert rows[0]["train/kept_rollouts"] > 0 and 0 <= rows[0]["rollout/logprob_mismatch"] < 1e-4


def test_one_epoch_takes_old_logprobs_from_the_loss_forward(tmp_path, monkeypatch):
    """With one PPO epoch and a sampler whose log-probs are not the trainer's (a bf16 copy), the loss forward's own
    log-probs are the "old" policy: no re-scoring pass (half the forwards), and the same gradients, loss and logged
    sampler gap as with that pass."""
    import searche1.old_logprobs
    import searche1.train
    from tiny import spy_adamw_grads

    grads = spy_adamw_grads(monkeypatch)
    calls = {"forward": 0, "rescore": 0}
    real_lp, real_rescore = searche1.train.masked_logprobs, searche1.train.rescore

    def lp(*a, **kw):
        calls["forward"] += 1
        return real_lp(*a, **kw)

    def rescore(*a, **kw):
        calls["rescore"] += 1
        return real_rescore(*a, **kw)

    monkeypatch.setattr(searche1.train, "masked_logprobs", lp)
    monkeypatch.setattr(searche1.old_logprobs, "masked_logprobs", lp)  # the re-scoring pass's forwards
    monkeypatch.setattr(searche1.train, "rescore", rescore)
    rows, applied, counts = {}, {}, {}
    for fuse in (True, False):
        if not fuse:
            monkeypatch.setattr(searche1.train, "fuse_rescore", lambda recompute, epochs: False)
        grads.clear()
        calls.update(forward=0, rescore=0)
        cfg = make_config(tmp_path, steps=1, micro_batch_size=3)
        cfg.rollout.sampler_dtype = "bfloat16"
        (rows[fuse],) = read_metrics(run_grpo(cfg, tmp_path / f"f{fuse}", progress=False,
                                              episode_reward=parity_reward))
        applied[fuse], counts[fuse] = list(grads), dict(calls)
    assert counts[True]["rescore"] == 0 and counts[False]["rescore"] == 1
    assert counts[False]["forward"] == 2 * counts[True]["forward"] > 0  # loss forwards + as many re-scoring ones
    assert rows[True]["train/kept_rollouts"] > 0 and rows[True]["loss/clip_frac"] == 0
    for k in ("rollout/logprob_mismatch", "loss/policy", "loss/ratio_max", "grad/norm"):
        assert rows[True][k] == pytest.approx(rows[False][k], rel=1e-4, abs=1e-7), k
    assert rows[True]["rollout/logprob_mismatch"] > 1e-4  # the bf16 sampler's gap was measured, not zeros
    (ga,), (gb,) = applied[True], applied[False]
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-6)


def test_truncated_importance_weights_in_a_grpo_step(tmp_path, monkeypatch):
    """grpo.tis_cap weights each token's surrogate by min(pi_old / pi_sampler, cap) (a bf16 sampling copy here): a
    cap far below every ratio makes every weight the cap, so the step's gradient is exactly cap times the plain one;
    a cap above every ratio logs weights near 1 that are not all 1 (the copy's log-probs differ)."""
    from tiny import spy_adamw_grads

    grads = spy_adamw_grads(monkeypatch)
    rows, applied = {}, {}
    for cap in (0.0, 1e-3, 100.0):
        grads.clear()
        # no clipping; fp32 training on any CPU (bf16 autocast would round the 1e-3-scaled gradient differently)
        cfg = make_config(tmp_path, steps=1, micro_batch_size=3, tis_cap=cap, max_grad_norm=0, bf16="off")
        cfg.rollout.sampler_dtype = "bfloat16"
        (rows[cap],) = read_metrics(run_grpo(cfg, tmp_path / f"tis-{cap}", progress=False,
                                             episode_reward=parity_reward))
        (applied[cap],) = grads
    assert rows[0.0]["train/kept_rollouts"] > 0 and "loss/is_weight_mean" not in rows[0.0]
    assert rows[1e-3]["loss/is_weight_mean"] == pytest.approx(1e-3) and rows[1e-3]["loss/is_capped_frac"] == 1.0
    assert rows[1e-3]["grad/norm"] == pytest.approx(1e-3 * rows[0.0]["grad/norm"], rel=1e-4)
    for plain, capped in zip(applied[0.0], applied[1e-3]):  # fp32 sums: noise relative to the tensor's scale
        worst = float((capped - 1e-3 * plain).abs().max() / (1e-3 * plain.abs().max()).clamp(min=1e-30))
        assert worst < 1e-5
    assert rows[100.0]["loss/is_capped_frac"] == 0.0 and 1.0 < rows[100.0]["loss/is_ratio_max"] < 100.0
    assert rows[1e-3]["loss/is_ratio_max"] == pytest.approx(rows[100.0]["loss/is_ratio_max"])  # same rollouts
    assert rows[100.0]["loss/is_weight_mean"] == pytest.approx(1.0, abs=0.05)
    assert rows[100.0]["loss/is_weight_mean"] != 1.0  # the bf16 copy's log-probs are not the trainer's
    assert rows[100.0]["rollout/logprob_mismatch"] > 1e-4


def test_truncated_importance_config_rules():
    from searche1.rollout.types import RolloutConfig

    with pytest.raises(ConfigError, match="tis_cap: must be a finite number >= 0"):
        from_dict(TrainConfig, {"grpo": {"tis_cap": -1}})
    with pytest.raises(ConfigError, match="recompute_logprobs: false makes them the same"):
        from_dict(TrainConfig, {"grpo": {"tis_cap": 2}, "rollout": {"recompute_logprobs": False}})
    with pytest.raises(ConfigError, match="rollout.vllm_logprobs is 0.5 .*fix: rollout.vllm_logprobs: true"):
        from_dict(TrainConfig, {"grpo": {"tis_cap": 2}, "rollout": {"engine": "vllm", "vllm_logprobs": 0.5}})
    cfg = from_dict(TrainConfig, {"grpo": {"tis_cap": 2}, "rollout": {"engine": "vllm"}})
    assert cfg.rollout.vllm_logprob_fraction() == 1.0  # unset: every episode, since the weights need them
    assert from_dict(TrainConfig, {"rollout": {"engine": "vllm"}}).rollout.vllm_logprob_fraction() < 1
    assert isinstance(cfg.rollout, RolloutConfig)


def test_full_sharding_refuses_lora_and_vllm_server_at_load():
    """grpo.sharding / ofsd.sharding: full with LoRA or vllm-server fails when the config loads, not when the phase
    (maybe hours into a pipeline) starts."""
    from searche1.pipeline import PipelineConfig

    with pytest.raises(ConfigError, match="grpo.sharding: full does not combine with LoRA.*fix: grpo.sharding: opt"):
        from_dict(TrainConfig, {"grpo": {"sharding": "full"}, "model": {"lora_r": 8}})
    with pytest.raises(ConfigError, match="ofsd.sharding: full does not combine.*fix: ofsd.sharding: optimizer"):
        from_dict(PipelineConfig, {"ofsd": {"sharding": "full"}, "rollout": {"engine": "vllm-server",
                                                                           "vllm_url": "http://x:8000"}})
    assert from_dict(PipelineConfig, {"ofsd": {"sharding": "full"}}).ofsd.sharding == "full"


def test_vllm_engine_config_errors():
    from searche1.rollout.types import RolloutConfig

    with pytest.raises(ConfigError, match="vllm_url: engine vllm-server needs"):
        from_dict(RolloutConfig, {"engine": "vllm-server"})
    with pytest.raises(ConfigError, match="engine"):
        from_dict(RolloutConfig, {"engine": "sglang"})


def test_bf16_sampling_copy_is_synced_and_rescored(tmp_path):
    """rollout.sampler_dtype: bfloat16 samples from a bf16 copy; after the step the copy holds the trainer's new
    weights (cast), and the trainer re-scored the samples (the logged gap is bf16-sized, not zero)."""
    from searche1.models import ModelConfig, load_policy
    from searche1.retrieval.config import make_retriever
    from searche1.rollout.factory import make_engine

    cfg = make_config(tmp_path, steps=1)
    cfg.rollout.sampler_dtype = "bfloat16"
    rows = read_metrics(run_grpo(cfg, tmp_path / "run", progress=False, episode_reward=parity_reward))
    assert rows[0]["train/kept_rollouts"] > 0 and 0 < rows[0]["rollout/logprob_mismatch"] < 0.5
    model, tok = load_policy(ModelConfig(name_or_path=cfg.model.name_or_path, device="cpu"), trainable=True)
    engine, sync, exact = make_engine(cfg.rollout, model, tok, make_retriever(cfg.retrieval), model_path="x",
                                      sync_dir=tmp_path / "s", device="cpu")
    assert not exact and engine.model is not model and next(engine.model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    sync()
    a, b = next(model.parameters()), next(engine.model.parameters())
    assert torch.equal(a.to(torch.bfloat16), b)
    cfg.rollout.sampler_dtype = "auto"  # fp32 trainer on a CPU without native bf16 (or with): never a copy of fp32
    engine2, _, exact2 = make_engine(cfg.rollout, model, tok, make_retriever(cfg.retrieval), model_path="x",
                                     sync_dir=tmp_path / "s", device="cpu")
    from searche1.models import cpu_has_native_bf16

    assert exact2 == (not cpu_has_native_bf16()) and (engine2.model is model) == exact2


def test_gradient_checkpointing_gives_the_same_run(tmp_path):
    """model.gradient_checkpointing only trades compute for memory: two GRPO steps give the same rewards and
    weights as without it, and rollouts (eval mode) still use the KV cache."""
    from searche1.models import load_policy

    base = make_config(tmp_path, steps=2, share_prompt=False)  # checkpointing turns prompt sharing off: compare alike
    ckpt = replace(base, model=replace(base.model, gradient_checkpointing=True))

    def checkpointing(cfg) -> bool:
        m = load_policy(cfg.model, trainable=True)[0]
        name = "is_activation_checkpointing" if hasattr(m, "is_activation_checkpointing") else \
            "is_gradient_checkpointing"  # the old name, deprecated in transformers 5.2x
        return getattr(m, name)

    assert checkpointing(ckpt) and not checkpointing(base)
    run_grpo(base, tmp_path / "plain", progress=False, episode_reward=parity_reward)
    run_grpo(ckpt, tmp_path / "ckpt", progress=False, episode_reward=parity_reward)
    ra, rb = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "ckpt")
    assert [r["reward/em"] for r in ra] == [r["reward/em"] for r in rb]
    (a1, wa), (_, wb) = ([weights(c) for c in list_checkpoints(tmp_path / run)] for run in ("plain", "ckpt"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-5, atol=1e-6), k
    assert any(not torch.equal(wa[k], a1[k]) for k in wa)  # step 2 did change the weights


def test_shared_prompt_gives_the_same_run(tmp_path, monkeypatch):
    """grpo.share_prompt (the prefix a micro-batch shares run once, searche1.scoring) changes no loss, gradient or
    weight: two steps with a KL reference and two PPO epochs, on and off, give the same metrics and weights."""
    from transformers import AutoModelForCausalLM

    import searche1.train
    from tiny import spy_adamw_grads, spy_prefixes

    prefixes = spy_prefixes(monkeypatch, searche1.train)
    grads = spy_adamw_grads(monkeypatch)
    runs, shared, applied = {}, {}, {}
    for share in (True, False):
        prefixes.clear()
        grads.clear()
        cfg = make_config(tmp_path, steps=2, micro_batch_size=3, kl_beta=0.5, ppo_epochs=2, share_prompt=share)
        runs[share] = run_grpo(cfg, tmp_path / f"share-{share}", progress=False, episode_reward=parity_reward)
        shared[share], applied[share] = sum(p > 0 for p in prefixes), list(grads)
    assert shared[True] >= 2 * 2 * 2 and shared[False] == 0  # policy and reference, 2 epochs, 2 steps: it did share
    ra, rb = read_metrics(runs[True]), read_metrics(runs[False])
    for k in ("reward/em", "loss/policy", "loss/kl_ref", "loss/num_tokens", "loss/ratio_max", "grad/norm"):
        assert [r[k] for r in ra] == pytest.approx([r[k] for r in rb], rel=1e-4, abs=1e-6), k
    assert ra[1]["loss/kl_ref"] > 0  # the reference model ran (and the policy had moved away from it)
    names = [n for n, _ in AutoModelForCausalLM.from_pretrained(tmp_path / "model").named_parameters()]
    assert len(applied[True]) == len(applied[False]) == 2 * 2  # 2 steps x 2 PPO epochs
    for step_a, step_b in zip(applied[True], applied[False]):  # every gradient AdamW applied
        assert len(step_a) == len(names)
        for n, ga, gb in zip(names, step_a, step_b):
            assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-6), n
    # AdamW divides each gradient by its running RMS + 1e-8: where a gradient is itself noise-sized (|g| < 1e-6 at
    # some update: rare tokens' rows of the tied LM head) and the two runs' differ, fp32 noise of ~1e-9 becomes an
    # update difference of ~1% of lr on some CPUs' matmul kernels (an AMX Xeon: 1.3e-5). Those entries are counted
    # and left out (the gradients themselves are compared above); every other weight must agree to 1e-5.
    wa, wb = (weights(list_checkpoints(r)[-1]) for r in (runs[True], runs[False]))
    noisy_total = 0
    for i, n in enumerate(names):
        noisy = torch.stack([(a[i].abs() < 1e-6) & (a[i] != b[i])
                             for a, b in zip(applied[True], applied[False])]).any(0)
        noisy_total += int(noisy.sum())
        assert torch.allclose(wa[n][~noisy], wb[n][~noisy], rtol=1e-5, atol=1e-5), n
    assert noisy_total < 0.05 * sum(w.numel() for w in wa.values())  # (measured: 1.3%, most in the tied LM head)


def test_loss_statistics_do_not_depend_on_micro_batching(tmp_path):
    """The step's loss statistics are the same whatever the micro-batch size: token-weighted means, summed loss
    parts (loss/kl_ref, divided by the step's normaliser in each micro-batch) and counts, and a max."""
    rows = []
    for micro in (1, 6):
        cfg = make_config(tmp_path, steps=1, micro_batch_size=micro, kl_beta=0.5, ppo_epochs=2)
        rows.append(read_metrics(run_grpo(cfg, tmp_path / f"m{micro}", progress=False,
                                          episode_reward=parity_reward))[0])
    keys = ["loss/policy", "loss/kl_ref", "loss/kl_ref_token_mean", "loss/num_tokens", "loss/ratio_mean",
            "loss/ratio_max", "loss/approx_kl", "loss/clip_frac"]
    assert rows[0]["loss/kl_ref"] > 0 and rows[0]["loss/num_tokens"] > 6  # the whole step's tokens, not a batch's
    for k in keys:
        assert rows[0][k] == pytest.approx(rows[1][k], rel=1e-3, abs=1e-6), k


def test_loss_stats_merge_by_kind():
    from searche1.metrics import LossStats

    a, b = LossStats(), LossStats()
    a.add({"loss/num_tokens": 3.0, "loss/clip_frac": 1.0, "loss/ratio_max": 1.5, "loss/kl_ref": 0.25,
           "loss/policy": 9.0})
    a.add({"loss/num_tokens": 1.0, "loss/clip_frac": 0.0, "loss/ratio_max": 1.1, "loss/kl_ref": 0.5})
    b.add({"loss/num_tokens": 0.0, "loss/clip_frac": 0.0, "loss/ratio_max": 0.0, "loss/kl_ref": 0.0})  # padding
    a.epochs = b.epochs = 1
    assert LossStats.merge([a.state(), b.state()]) == {
        "loss/clip_frac": 0.75, "loss/kl_ref": 0.75, "loss/num_tokens": 4.0, "loss/ratio_max": 1.5}


def test_collapse_detector_levels_and_streaks():
    from searche1.health import CollapseDetector, HealthConfig

    h = CollapseDetector(HealthConfig(watch=["r"], window=2, patience=2))
    assert [h.update({"r": v}) for v in (0.8, 0.6, 0.6, 0.2, 0.1)] == [[], [], [], [], ["r"]]
    assert h.streak(["r"]) == 2  # 0.2 and 0.1 are below half the level 0.6, which they do not lower
    h.reset()
    assert h.streak(["r"]) == 0 and h.update({"r": 0.9}) == [] and h.history["r"][-1] == 0.9


def test_collapse_rolls_back_to_a_checkpoint_from_before_the_low_steps(tmp_path):
    """Reward 1 for steps 1-3, then 0: the collapse is seen at step 5 (patience 2). Step 4's rollouts were sampled
    with the weights saved at step 3, so the rollback goes to step 2's checkpoint, not to the newest (step 4)."""
    calls = [0]

    def reward(ep):
        calls[0] += 1
        r = float(calls[0] <= 3 * 6)  # 6 episodes per step
        return r, {"reward/em": r, "reward/f1": r}

    cfg = make_config(tmp_path, steps=5, save_every=1, keep_last=10)
    cfg.health = from_dict(type(cfg.health), {"watch": ["reward/em"], "window": 2, "patience": 2,
                                              "rollback_on_collapse": True})
    rows = read_metrics(run_grpo(cfg, tmp_path / "run", progress=False, episode_reward=reward))
    assert [r.get("health/rollback_to") for r in rows] == [None, None, None, None, 2]
    assert rows[-1]["health/collapse"] == 1.0


def test_collapse_warns_once_and_flags_every_low_step(tmp_path, caplog):
    """Without rollback the run stays low: every step in collapse is flagged in the metrics, but the warning is given
    once, when the collapse begins (it used to repeat on every step)."""
    calls = [0]

    def reward(ep):
        calls[0] += 1
        r = float(calls[0] <= 2 * 6)  # 6 episodes per step: reward 1 for steps 1-2, then 0
        return r, {"reward/em": r, "reward/f1": r}

    cfg = make_config(tmp_path, steps=7, save_every=100)
    cfg.health = from_dict(type(cfg.health), {"watch": ["reward/em"], "window": 2, "patience": 2})
    with caplog.at_level(logging.WARNING, logger="searche1.train"):
        rows = read_metrics(run_grpo(cfg, tmp_path / "run", progress=False, episode_reward=reward))
    assert [r.get("health/collapse") for r in rows] == [None, None, None, 1.0, 1.0, 1.0, 1.0]
    assert sum("collapse of reward/em" in m for m in caplog.messages) == 1


def test_max_grad_norm_zero_disables_clipping(tmp_path):
    """0 means no clipping (as in the warm-up), not a zero gradient: the step still moves the weights."""
    from searche1.ofsd.phase import OFSDConfig

    cfg = make_config(tmp_path, steps=1, max_grad_norm=0.0, weight_decay=0.0)
    start = weights(Path(cfg.model.name_or_path))
    out = run_grpo(cfg, tmp_path / "run", progress=False, episode_reward=parity_reward)
    end = weights(list_checkpoints(out)[-1])
    assert read_metrics(out)[0]["grad/norm"] > 0 and any(not torch.equal(start[k], end[k]) for k in start)
    for cls, section in ((TrainConfig, {"grpo": {"max_grad_norm": -1}}), (OFSDConfig, {"max_grad_norm": -1})):
        with pytest.raises(ConfigError, match="max_grad_norm: must be >= 0"):
            from_dict(cls, section)


def test_lora_checkpoints_are_merged_hf_folders_and_resume_exactly(tmp_path):
    """model.lora_r > 0: every checkpoint is a plain HF folder with the adapters merged (it loads without peft and
    gives the trained policy's logits) plus adapter/; an interrupted run resumes to the uninterrupted one's weights."""
    from searche1.checkpoint import hf_state_dict
    from searche1.models import ModelConfig, load_policy

    cfg = make_config(tmp_path, steps=2, save_every=1)
    cfg.model.lora_r = 4
    full = run_grpo(cfg, tmp_path / "full", progress=False, episode_reward=parity_reward)
    part = tmp_path / "part"
    run_grpo(cfg, part, progress=False, stop_after=1, episode_reward=parity_reward)
    run_grpo(cfg, part, resume=True, progress=False, episode_reward=parity_reward)
    a, b = weights(list_checkpoints(full)[-1]), weights(list_checkpoints(part)[-1])
    base = weights(Path(cfg.model.name_or_path))
    assert a.keys() == base.keys() and any(not torch.equal(a[k], base[k]) for k in a)  # merged, and trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    ckpt = list_checkpoints(full)[-1]
    assert (ckpt / "adapter" / "adapter_model.safetensors").is_file()
    # the merged folder is the trained policy: same logits as base + adapter
    merged, _ = load_policy(ModelConfig(name_or_path=str(ckpt), device="cpu", dtype="float32"))
    peft_model, _ = load_policy(replace(cfg.model, device="cpu"), trainable=True)
    from searche1.checkpoint import load_checkpoint

    load_checkpoint(ckpt, peft_model, restore_rng=False)
    peft_model.eval()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft_model(ids).logits, rtol=1e-4, atol=1e-5)
    assert hf_state_dict(peft_model).keys() == merged.state_dict().keys()  # HF names, no adapter tensors


def test_a_step_whose_searches_mostly_fail_stops_before_training():
    """A retriever that is down (after the client's retries) used to end episodes with retrieval_error and training
    went on, teaching the policy that searching fails; a majority of such episodes now stops the run, untrained."""
    from searche1.distributed import Dist
    from searche1.errors import RetrievalError
    from searche1.rollout.types import StopReason
    from searche1.train import check_retrieval

    def eps(n_bad: int, n: int = 10) -> list[Episode]:
        out = [Episode(example_id=str(i), question="q", answers=["a"], prompt_ids=[1],
                       stop_reason=StopReason.RETRIEVAL_ERROR if i < n_bad else StopReason.ANSWERED) for i in range(n)]
        for e in out[:n_bad]:
            e.metrics["retrieval_error"] = "connection refused"
        return out

    check_retrieval(eps(4), Dist(), 3)  # isolated failures only end their own episodes
    with pytest.raises(RetrievalError, match="step 3: 5 of 10 episodes .*connection refused.*--resume"):
        check_retrieval(eps(5), Dist(), 3)
