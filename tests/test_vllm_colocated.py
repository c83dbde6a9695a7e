"""The colocated vLLM engine without vLLM: ``push_weights`` on fake engines, ``load_llm`` and ``make_engine``
settings, and GRPO runs through a random fake ``vllm.LLM`` (one engine per process, a push before the first
rollout and after every step)."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
import torch

from searche1.rollout.types import RolloutConfig
from searche1.rollout.vllm_colocated import load_llm, push_weights
from searche1.rollout.vllm_engine import LOGPROBS_MODE

from vllm_fakes import fake_colocated, RandomLLM
from vllm_fakes import fake_vllm, tok  # noqa: F401 (fixtures; fake_vllm is autouse)


def test_push_weights_paths(fake_vllm):
    model = torch.nn.Linear(3, 2)
    compiled = types.SimpleNamespace(_orig_mod=model, state_dict=lambda: {"wrapped": torch.zeros(1)})
    # in-process model (V0, V1 without multiprocessing), behind a torch.compile wrapper
    llm, loaded = fake_colocated(llm_engine=lambda m: types.SimpleNamespace(model_executor=types.SimpleNamespace(
        driver_worker=types.SimpleNamespace(model_runner=types.SimpleNamespace(model=m)))))
    assert push_weights(llm, compiled) == 2 and llm.resets == 1
    assert set(loaded) == {"weight", "bias"} and torch.equal(loaded["weight"], model.weight)
    # apply_model (newer vLLM); collective_rpc with a function of the worker
    for methods in ({"apply_model": lambda m: lambda fn: [fn(m)]},
                    {"collective_rpc": lambda m: lambda fn: [fn(types.SimpleNamespace(get_model=lambda: m))]}):
        llm, loaded = fake_colocated(**methods)
        push_weights(llm, model)
        assert set(loaded) == {"weight", "bias"} and llm.resets == 1
    with pytest.raises(RuntimeError, match=r"vllm 0\.0-fake"):
        push_weights(fake_colocated()[0], model)
    # to an engine in its own process, the fp32 trained weights travel in the engine's dtype
    llm, loaded = fake_colocated(apply_model=lambda m: lambda fn: [fn(m)])
    llm.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(dtype=torch.bfloat16))
    push_weights(llm, model)
    assert {v.dtype for v in loaded.values()} == {torch.bfloat16} and model.weight.dtype == torch.float32
    assert torch.equal(loaded["weight"], model.weight.detach().to(torch.bfloat16))


def test_push_weights_in_process_gathers_one_tensor_at_a_time(fake_vllm, monkeypatch):
    """In process, the engine's loader pulls the weights one by one, each gathered (under FSDP) only when it is
    loaded: one full tensor at a time instead of the whole policy; a loader that stops early still leaves every
    tensor gathered (the gathers are collectives every rank must join)."""
    import searche1.sharding

    events: list[str] = []
    real = searche1.sharding.full_tensor
    monkeypatch.setattr(searche1.sharding, "full_tensor", lambda t: events.append("gather") or real(t))
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))

    def loader(take: int | None):
        def load_weights(weights):
            for i, (name, _) in enumerate(weights):
                events.append("load " + name)
                if take is not None and i + 1 == take:
                    return
        return lambda m: types.SimpleNamespace(model_executor=types.SimpleNamespace(driver_worker=types.SimpleNamespace(
            model_runner=types.SimpleNamespace(model=types.SimpleNamespace(load_weights=load_weights)))))

    llm, _ = fake_colocated(llm_engine=loader(None))
    assert push_weights(llm, model) == 4
    assert events == [e for n in ("0.weight", "0.bias", "1.weight", "1.bias") for e in ("gather", "load " + n)]
    events.clear()
    llm, _ = fake_colocated(llm_engine=loader(1))
    push_weights(llm, model)
    assert events == ["gather", "load 0.weight", "gather", "gather", "gather"]


def test_push_weights_warns_when_vllm_keeps_its_prefix_cache(fake_vllm, caplog):
    """vLLM 0.20's reset_prefix_cache returns False (and resets nothing) while requests hold KV blocks: said aloud."""
    llm, loaded = fake_colocated(apply_model=lambda m: lambda fn: [fn(m)])
    llm.reset_prefix_cache = lambda: False
    with caplog.at_level("WARNING", logger="searche1.rollout.vllm_colocated"):
        push_weights(llm, torch.nn.Linear(3, 2))
    assert set(loaded) == {"weight", "bias"} and "kept its prefix cache" in caplog.text


def test_push_weights_merges_a_lora_policy(fake_vllm):
    """A peft LoRA policy reaches vLLM under the HF names, with its adapters merged (vLLM's model has none)."""
    from peft import LoraConfig, get_peft_model
    from tiny import tiny_model

    base = tiny_model()
    names = set(base.state_dict())
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p)  # a trained adapter: the merge changes q_proj and v_proj
    llm, loaded = fake_colocated(apply_model=lambda m: lambda fn: [fn(m)])
    push_weights(llm, model)
    assert set(loaded) == names
    q = "model.layers.0.self_attn.q_proj.weight"
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    torch.testing.assert_close(loaded[q], layer.base_layer.weight + layer.get_delta_weight("default"))
    assert not torch.equal(loaded[q], layer.base_layer.weight)


def test_load_llm_requests_processed_logprobs(fake_vllm):
    made: list[dict] = []

    class LLM:
        def __init__(self, **kw):
            if fake_vllm.old and "logprobs_mode" in kw:
                raise TypeError("EngineArgs.__init__() got an unexpected keyword argument 'logprobs_mode'")
            made.append(kw)

    fake_vllm.LLM, fake_vllm.old = LLM, False
    load_llm("m", gpu_memory_utilization=0.3)
    assert made[-1] == {"model": "m", "gpu_memory_utilization": 0.3, "logprobs_mode": LOGPROBS_MODE,
                        "enable_prefix_caching": True}
    fake_vllm.old = True
    load_llm("m")
    assert "logprobs_mode" not in made[-1]


def test_make_engine_passes_vllm_kwargs(fake_vllm, tok, monkeypatch, tmp_path):
    """rollout.vllm_kwargs reach vllm.LLM and may override the defaults; the colocated engine runs in process."""
    from searche1.rollout.factory import make_engine

    made: list[dict] = []
    fake_vllm.LLM = lambda **kw: made.append(kw) or types.SimpleNamespace()
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the config decides, not a stale export
    model = types.SimpleNamespace(generation_config=types.SimpleNamespace(eos_token_id=[7, 8]))
    cfg = RolloutConfig(engine="vllm", max_total_tokens=512,
                        vllm_kwargs={"enforce_eager": True, "attention_config": {"backend": "TRITON_ATTN"},
                                     "gpu_memory_utilization": 0.2})
    engine, sync, exact = make_engine(cfg, model, tok, None, model_path=tmp_path, sync_dir=tmp_path, device="cuda")
    assert made == [{"model": str(tmp_path), "gpu_memory_utilization": 0.2, "max_model_len": 512,
                     "dtype": "bfloat16", "enforce_eager": True, "attention_config": {"backend": "TRITON_ATTN"},
                     "logprobs_mode": LOGPROBS_MODE, "enable_prefix_caching": True}]
    assert not exact and {7, 8} <= engine.eos_ids and os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    # vLLM's engine in its own process: weights then go by RPC, which needs pickled functions
    monkeypatch.delenv("VLLM_ALLOW_INSECURE_SERIALIZATION", raising=False)
    make_engine(RolloutConfig(engine="vllm", vllm_multiprocessing=True), model, tok, None, model_path=tmp_path,
                sync_dir=tmp_path, device="cuda")
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] == "1"


def test_colocated_vllm_on_one_rank_of_several_uses_the_external_launcher(fake_vllm, tok, tmp_path, monkeypatch):
    """Under a launcher (WORLD_SIZE > 1) each rank's engine gets vLLM's external_launcher executor, which places it
    on cuda:LOCAL_RANK (the default executor puts every rank's engine on GPU 0); an engine in its own process or
    tensor parallelism across the ranks cannot work that way and fails with the fix named."""
    from searche1.errors import ConfigError
    from searche1.rollout.factory import make_engine

    made: list[dict] = []
    fake_vllm.LLM = lambda **kw: made.append(kw) or types.SimpleNamespace()  # refuses what vLLM 0.20 refuses
    model = types.SimpleNamespace(generation_config=None)
    kw = dict(model_path=tmp_path, sync_dir=tmp_path, device="cuda:3")
    make_engine(RolloutConfig(engine="vllm"), model, tok, None, **kw)
    assert "distributed_executor_backend" not in made[-1]  # one process: vLLM's default executor
    monkeypatch.setattr("searche1.rollout.factory._COLOCATED", {})
    monkeypatch.setenv("WORLD_SIZE", "8")
    make_engine(RolloutConfig(engine="vllm"), model, tok, None, seed=3, **kw)
    assert made[-1]["distributed_executor_backend"] == "external_launcher" and made[-1]["seed"] == 3
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # the executor asserts it
    with pytest.raises(ConfigError, match="vllm_multiprocessing: with 8 ranks.*fix: rollout.vllm_multiprocessing"):
        make_engine(RolloutConfig(engine="vllm", vllm_multiprocessing=True), model, tok, None, **kw)
    with pytest.raises(ConfigError, match="tensor_parallel_size: with 8 ranks.*fix:"):
        make_engine(RolloutConfig(engine="vllm", vllm_kwargs={"tensor_parallel_size": 2}), model, tok, None, **kw)
    assert len(made) == 2


def test_make_engine_seeds_a_new_vllm_engine_only(fake_vllm, tok, tmp_path):
    """The run's seed reaches vllm.LLM (its own generator samples requests without seeds); a later phase with
    another seed reuses the engine (the seed is not part of its shape); vllm_kwargs may override it."""
    from searche1.rollout.factory import make_engine

    made: list[dict] = []
    fake_vllm.LLM = lambda **kw: made.append(kw) or types.SimpleNamespace()
    model = types.SimpleNamespace(generation_config=None)
    kw = dict(model_path=tmp_path, sync_dir=tmp_path, device="cuda")
    make_engine(RolloutConfig(engine="vllm"), model, tok, None, seed=5001, **kw)
    make_engine(RolloutConfig(engine="vllm"), model, tok, None, seed=7000, **kw)
    make_engine(RolloutConfig(engine="vllm", vllm_kwargs={"seed": 3, "enforce_eager": True}), model, tok, None,
                seed=7000, **kw)
    assert [m["seed"] for m in made] == [5001, 3]


def test_grpo_with_colocated_vllm_reuses_the_engine_and_pushes_first(fake_vllm, tmp_path):
    """Two GRPO runs in one process with rollout.engine: vllm (a pipeline's two GRPO phases): one engine is built;
    each run pushes its starting weights before its first rollout (the second run starts from the model folder, not
    from the weights the first run left in the engine) and its new weights after every step."""
    from test_train import make_config, parity_reward, weights

    from searche1.rollout import factory
    from searche1.train import run_grpo

    built = []

    def LLM(**kw):  # noqa: N802  (stands for vllm.LLM)
        built.append(kw)
        return RandomLLM(vocab=550)

    fake_vllm.LLM = LLM
    cfg = make_config(tmp_path, steps=2)
    cfg.rollout.engine = "vllm"
    start = weights(Path(cfg.model.name_or_path))
    run_grpo(cfg, tmp_path / "a", progress=False, episode_reward=parity_reward)
    llm = next(iter(factory._COLOCATED.values()))
    first_run = list(llm.events)
    run_grpo(cfg, tmp_path / "b", progress=False, episode_reward=parity_reward)
    assert len(built) == 1 and built[0]["model"] == cfg.model.name_or_path
    second_run = llm.events[len(first_run):]
    for events, out in ((first_run, tmp_path / "a"), (second_run, tmp_path / "b")):
        kinds = [k for k, _ in events]
        assert kinds[0] == "push" and kinds.count("push") == 3 and "generate" in kinds  # start + 2 steps
        first_push, last_push = events[0][1], [e for k, e in events if k == "push"][-1]
        assert all(torch.equal(first_push[k], start[k]) for k in start)  # both runs start from the folder
        final = weights(sorted((out / "checkpoints").iterdir())[-1])
        assert all(torch.equal(last_push[k], final[k]) for k in final)
    assert not all(torch.equal(first_run[-1][1][k], start[k]) for k in start)  # the first run did train


def test_pipeline_ofsd_samples_with_the_runs_vllm_engine(fake_vllm, tmp_path):
    """A grpo → ofsd schedule with rollout.engine: vllm: the OFSD phase samples its groups through the same
    colocated engine (one engine in the process), after a push of the weights it starts from (the GRPO output)."""
    import json

    from test_pipeline import final_weights, pipeline_config
    from test_train import parity_reward

    from searche1.pipeline import run_pipeline
    from searche1.rollout import factory

    built: list[dict] = []
    fake_vllm.LLM = lambda **kw: built.append(kw) or RandomLLM(vocab=550)
    cfg = pipeline_config(tmp_path)
    cfg.schedule, cfg.rollout.engine = ["grpo", "ofsd"], "vllm"
    run_pipeline(cfg, tmp_path / "run", progress=False, episode_reward=parity_reward)
    (llm,) = factory._COLOCATED.values()
    assert len(built) == 1
    kinds = [k for k, _ in llm.events]
    last_push = max(i for i, k in enumerate(kinds) if k == "push")
    assert "generate" in kinds[last_push:]  # the OFSD phase sampled after its push
    state = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    grpo_out = final_weights(tmp_path / "run" / state["phases"][0]["model"])  # recorded relative to the run
    assert all(torch.equal(llm.events[last_push][1][k], v) for k, v in grpo_out.items())
