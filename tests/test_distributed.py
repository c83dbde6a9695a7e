"""Data parallelism over gloo: 2 processes on CPU give the single-process GRPO step (loss, gradient norm, weights)
and OFSD steps (rollouts, pairs, gradients); a GRPO → OFSD → GRPO pipeline runs and resumes on 2 ranks."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import TESTS, make_config, parity_reward, weights

from searche1.checkpoint import list_checkpoints
from searche1.distributed import Dist, merge_metrics
from searche1.errors import ConfigError
from searche1.metrics import read_metrics
from searche1.train import run_grpo

RANK_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_train import make_config, parity_reward
    from searche1.train import run_grpo
    cfg = make_config(Path({root!r}), steps=2, questions_per_step=4, **{extra!r})
    for k, v in {rollout!r}.items():
        setattr(cfg.rollout, k, v)
    run_grpo(cfg, Path({out!r}), progress=False, episode_reward=parity_reward)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ranks(script: str, world: int, grads: Path, timeout: float = 300) -> None:
    env_base = {**os.environ, "SEARCHE1_GRAD_DUMP": str(grads), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(world),
                "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script], env={**env_base, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)]
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    for r, (p, o) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {r} failed:\n{o[-3000:]}"


def assert_same_grads(root: Path, steps, prefix: str = "") -> None:
    """The full gradients rank 0 dumped (grads-dp/) equal the single process's (grads-single/) at every step."""
    for step in steps:
        ga = load_file(str(root / "grads-single" / f"{prefix}step-{step}.safetensors"))
        gb = load_file(str(root / "grads-dp" / f"{prefix}step-{step}.safetensors"))
        assert ga.keys() == gb.keys() and ga
        for k in ga:
            assert torch.allclose(ga[k], gb[k], rtol=1e-4, atol=1e-6), (step, k, (ga[k] - gb[k]).abs().max())


@pytest.mark.parametrize("extra, rollout", [({}, {}), ({}, {"sampler_dtype": "bfloat16"})],
                         ids=["fp32-sampler", "bf16-copy"])
def test_two_gloo_ranks_match_one_process(tmp_path, monkeypatch, extra, rollout):
    """Also with a bf16 sampling copy: the "old" log-probs come from the loss forward, so the gradients do not
    depend on the copy's log-probs, which round differently in a batch of another shape (a rank's half); the gap to
    them is logged from both ranks."""
    cfg = make_config(tmp_path, steps=2, questions_per_step=4, **extra)
    for k, v in rollout.items():
        setattr(cfg.rollout, k, v)
    monkeypatch.setenv("SEARCHE1_GRAD_DUMP", str(tmp_path / "grads-single"))
    single = run_grpo(cfg, tmp_path / "single", progress=False, episode_reward=parity_reward)
    launch_ranks(RANK_SCRIPT.format(tests=str(TESTS), root=str(tmp_path), out=str(tmp_path / "dp"), extra=extra,
                                    rollout=rollout), world=2, grads=tmp_path / "grads-dp")
    a, b = read_metrics(single), read_metrics(tmp_path / "dp")
    assert [r["step"] for r in b] == [1, 2]  # rank 0 logs once per step
    assert any(r["train/kept_rollouts"] > 0 for r in a)  # the step carried signal
    for ra, rb in zip(a, b):
        for k in ("reward/em", "rollout/policy_tokens", "train/kept_rollouts", "grpo/zero_std_groups"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-9), k
        for k in ("loss/policy", "grad/norm", "loss/num_tokens", "loss/ratio_mean", "loss/ratio_max",
                  "loss/clip_frac", "loss/approx_kl"):  # loss statistics merge over ranks by kind (LossStats)
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-7), k
        assert ("rollout/logprob_mismatch" in rb) == bool(rollout)
        if rollout:  # the copy rounds differently in a rank's half batch (measured: within 1%)
            assert rb["rollout/logprob_mismatch"] == pytest.approx(ra["rollout/logprob_mismatch"], rel=0.05)
    # the full-batch gradient of each step (after the all-reduce, before clipping) equals the single process's;
    # step 2's gradient is taken at the weights after step 1, so it also checks the first update
    assert_same_grads(tmp_path, (1, 2))
    wa, wb = weights(list_checkpoints(single)[-1]), weights(list_checkpoints(tmp_path / "dp")[-1])
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst < 3 * cfg.grpo.lr  # AdamW normalises each entry, so rounding-level gradient noise on entries
    # whose gradient is ~0 can move them by up to ~lr per step: a bound, not bit equality
    assert json.loads((tmp_path / "dp" / "config.json").read_text())["grpo"]["questions_per_step"] == 4


VLLM_RANK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_train import make_config, parity_reward
    from vllm_fakes import RandomLLM, install_fake_vllm
    from searche1.train import run_grpo
    built, built_llm = [], []
    install_fake_vllm().LLM = lambda **kw: built.append(kw) or built_llm.append(RandomLLM(vocab=550)) or built_llm[-1]
    cfg = make_config(Path({root!r}), steps=2, questions_per_step=4, **{extra!r})
    cfg.rollout.engine = "vllm"
    run_grpo(cfg, Path({out!r}), progress=False, episode_reward=parity_reward)
    Path({root!r}, "built-" + os.environ["RANK"] + ".json").write_text(json.dumps(built, default=str))
    if os.environ["RANK"] == "0":  # the weights rank 0's engine got at its last push
        from safetensors.torch import save_file
        save_file(built_llm[0].events[-1][1], str(Path({root!r}, "pushed-dp.safetensors")))
""")


@pytest.mark.parametrize("extra", [{}, {"sharding": "full", "skip_zero_std_groups": True}], ids=["ddp", "fsdp"])
def test_two_gloo_ranks_with_colocated_vllm_match_one_process(tmp_path, monkeypatch, extra):
    """rollout.engine: vllm on 2 ranks (a stand-in vLLM that refuses what vLLM 0.20 refuses): each rank builds its
    own engine with the external_launcher executor and its own seed, and the steps match one process (the
    episodes come from per-episode seeds, the old log-probs from the trainer); under FSDP the push gathers the
    sharded weights one tensor at a time into each rank's engine: the last push holds the trained weights."""
    from vllm_fakes import RandomLLM, install_fake_vllm

    built: list[dict] = []
    install_fake_vllm(lambda name, value: monkeypatch.setitem(sys.modules, name, value)).LLM = (
        lambda **kw: built.append(kw) or RandomLLM(vocab=550))
    monkeypatch.setattr("searche1.rollout.factory._COLOCATED", {})
    cfg = make_config(tmp_path, steps=2, questions_per_step=4, **extra)
    cfg.rollout.engine = "vllm"
    monkeypatch.setenv("SEARCHE1_GRAD_DUMP", str(tmp_path / "grads-single"))
    single = run_grpo(cfg, tmp_path / "single", progress=False, episode_reward=parity_reward)
    launch_ranks(VLLM_RANK_SCRIPT.format(tests=str(TESTS), root=str(tmp_path), out=str(tmp_path / "dp"),
                                         extra=extra), world=2, grads=tmp_path / "grads-dp")
    pushed, final = load_file(str(tmp_path / "pushed-dp.safetensors")), weights(list_checkpoints(tmp_path / "dp")[-1])
    assert final.keys() <= pushed.keys() and all(torch.equal(pushed[k], final[k]) for k in final)  # (+ tied head)
    assert len(built) == 1 and "distributed_executor_backend" not in built[0]
    ranks = [json.loads((tmp_path / f"built-{r}.json").read_text()) for r in (0, 1)]
    assert [len(b) for b in ranks] == [1, 1]
    assert all(b[0]["distributed_executor_backend"] == "external_launcher" for b in ranks)
    assert ranks[0][0]["seed"] != ranks[1][0]["seed"]
    a, b = read_metrics(single), read_metrics(tmp_path / "dp")
    assert [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        for k in ("reward/em", "rollout/policy_tokens", "train/kept_rollouts", "loss/policy", "grad/norm",
                  "loss/num_tokens"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-7), k
        assert rb["rollout/logprob_mismatch"] == pytest.approx(ra["rollout/logprob_mismatch"], rel=1e-4), k
    assert_same_grads(tmp_path, (1, 2))


def test_zero1_sharded_optimizer_matches_one_process_and_resumes(tmp_path):
    """grpo.sharding: optimizer (ZeRO-1) on 2 ranks: half the AdamW state per rank, the one-process weights after 2
    steps, a consolidated optimizer.pt equal to the unsharded one, and a resumed third step."""
    cfg = make_config(tmp_path, steps=2, questions_per_step=4, sharding="optimizer")
    single = run_grpo(cfg, tmp_path / "single", progress=False, episode_reward=parity_reward)
    script = RANK_SCRIPT.format(tests=str(TESTS), root=str(tmp_path), out=str(tmp_path / "dp"),
                                extra={"sharding": "optimizer"}, rollout={})
    launch_ranks(script, world=2, grads=tmp_path / "g")
    a, b = read_metrics(single), read_metrics(tmp_path / "dp")
    for ra, rb in zip(a, b):
        assert rb["grad/norm"] == pytest.approx(ra["grad/norm"], rel=1e-4)
        assert 0.3 < rb["mem/optimizer_state_mb"] / ra["mem/optimizer_state_mb"] < 0.7  # rank 0 holds ~half
    ca, cb = list_checkpoints(single)[-1], list_checkpoints(tmp_path / "dp")[-1]
    wa, wb = weights(ca), weights(cb)
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 3 * cfg.grpo.lr
    oa, ob = (torch.load(c / "optimizer.pt", weights_only=False) for c in (ca, cb))
    assert oa["state"].keys() == ob["state"].keys() and oa["state"]
    for i in oa["state"]:
        assert int(oa["state"][i]["step"]) == int(ob["state"][i]["step"]) == 2
        assert torch.allclose(oa["state"][i]["exp_avg_sq"], ob["state"][i]["exp_avg_sq"], rtol=1e-3, atol=1e-12)
    resume = script.replace("steps=2", "steps=3").replace("progress=False", "resume=True, progress=False")
    launch_ranks(resume, world=2, grads=tmp_path / "g")
    assert [r["step"] for r in read_metrics(tmp_path / "dp")] == [1, 2, 3]


def test_fsdp_full_sharding_matches_one_process_and_resumes(tmp_path, monkeypatch):
    """grpo.sharding: full (FSDP2) on 2 gloo ranks: the one-process full gradients at steps 1 and 2 (with
    all-equal groups skipped, so the ranks pad to lockstep), plain HF checkpoints, half the AdamW state per rank,
    and a resumed third step."""
    extra = {"sharding": "full", "skip_zero_std_groups": True}
    cfg = make_config(tmp_path, steps=2, questions_per_step=4, **extra)
    monkeypatch.setenv("SEARCHE1_GRAD_DUMP", str(tmp_path / "grads-single"))
    single = run_grpo(cfg, tmp_path / "single", progress=False, episode_reward=parity_reward)
    script = RANK_SCRIPT.format(tests=str(TESTS), root=str(tmp_path), out=str(tmp_path / "dp"), extra=extra,
                                rollout={})
    launch_ranks(script, world=2, grads=tmp_path / "grads-dp")
    a, b = read_metrics(single), read_metrics(tmp_path / "dp")
    assert any(r["grpo/zero_std_groups"] > 0 for r in a) and all(r["train/kept_rollouts"] > 0 for r in a)
    for ra, rb in zip(a, b):
        for k in ("reward/em", "train/kept_rollouts"):
            assert rb[k] == ra[k], k
        for k in ("loss/policy", "grad/norm"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-7), k
        assert 0.3 < rb["mem/optimizer_state_mb"] / ra["mem/optimizer_state_mb"] < 0.7
    assert_same_grads(tmp_path, (1, 2))
    ca, cb = list_checkpoints(single)[-1], list_checkpoints(tmp_path / "dp")[-1]
    wa, wb = weights(ca), weights(cb)  # gathered full weights in HF layout
    assert wa.keys() == wb.keys() and max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 3 * cfg.grpo.lr
    oa, ob = (torch.load(c / "optimizer.pt", weights_only=False) for c in (ca, cb))
    assert len(ob["state"]) == len(oa["state"]) and all(isinstance(k, str) for k in ob["state"])  # by name
    resume = script.replace("steps=2", "steps=3").replace("progress=False", "resume=True, progress=False")
    launch_ranks(resume, world=2, grads=tmp_path / "grads-dp")
    assert [r["step"] for r in read_metrics(tmp_path / "dp")] == [1, 2, 3]
    # the FSDP checkpoint (name-keyed optimizer state) resumes in one unsharded process too
    import shutil

    shutil.copytree(tmp_path / "dp", tmp_path / "dp-single")
    run_grpo(make_config(tmp_path, steps=4, questions_per_step=4, **extra), tmp_path / "dp-single", resume=True,
             progress=False, episode_reward=parity_reward)
    assert [r["step"] for r in read_metrics(tmp_path / "dp-single")] == [1, 2, 3, 4]


FSDP_BF16_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    import searche1.sharding as sh
    from test_train import make_config, parity_reward
    from searche1.train import run_grpo
    seen, real = [], sh.shard_model

    def spy(model, *a, **kw):  # the dtype a decoder layer's weights have while it runs
        out = real(model, *a, **kw)
        layer = next(m for m in model.modules() if type(m).__name__.endswith("DecoderLayer"))
        layer.register_forward_pre_hook(lambda mod, args: seen.append(str(mod.mlp.down_proj.weight.dtype)))
        return out

    sh.shard_model = spy
    import torch.distributed as dist
    gathered = [0]

    def counting(real):  # the bytes this rank sends into FSDP's weight all-gathers
        def gather(out, inp, *a, **kw):
            gathered[0] += inp.numel() * inp.element_size()
            return real(out, inp, *a, **kw)
        return gather

    for name in ("all_gather_single", "all_gather_into_tensor"):  # FSDP2 calls the first on newer torch
        if hasattr(dist, name):
            setattr(dist, name, counting(getattr(dist, name)))
    cfg = make_config(Path({root!r}), steps=1, questions_per_step=4, sharding="full", bf16="on",
                      fsdp_param_dtype={dtype!r})
    run_grpo(cfg, Path({out!r}), progress=False, episode_reward=parity_reward)
    Path({out!r}, "seen-" + str(__import__("os").environ["RANK"])).write_text(
        json.dumps({{"dtypes": sorted(set(seen)), "gathered": gathered[0]}}))
""")


def test_fsdp_bf16_gathers_keep_fp32_shards_and_match_autocast(tmp_path, monkeypatch):
    """grpo.fsdp_param_dtype: auto under bf16 autocast: FSDP gathers and computes with bf16 weights (seen inside a
    decoder layer), the checkpoint and AdamW keep fp32, and the step's full gradient is the one-process autocast
    gradient up to bf16 rounding."""
    cfg = make_config(tmp_path, steps=1, questions_per_step=4, sharding="full", bf16="on")
    monkeypatch.setenv("SEARCHE1_GRAD_DUMP", str(tmp_path / "grads-single"))
    single = run_grpo(cfg, tmp_path / "single", progress=False, episode_reward=parity_reward)
    seen = {}
    for dtype in ("float32", "auto"):  # fp32 gathers first, for the traffic comparison; "auto" = bf16 here
        launch_ranks(FSDP_BF16_SCRIPT.format(tests=str(TESTS), root=str(tmp_path), out=str(tmp_path / dtype),
                                             dtype=dtype), world=2, grads=tmp_path / "grads-dp")
        seen[dtype] = [json.loads((tmp_path / dtype / f"seen-{r}").read_text()) for r in range(2)]
    assert [s["dtypes"] for s in seen["auto"]] == [["torch.bfloat16"]] * 2
    assert [s["dtypes"] for s in seen["float32"]] == [["torch.float32"]] * 2
    for r in range(2):  # the same gathers, in half the bytes
        assert seen["auto"][r]["gathered"] * 2 == seen["float32"][r]["gathered"] > 0
    a, b = read_metrics(single)[0], read_metrics(tmp_path / "auto")[0]
    assert a["train/kept_rollouts"] == b["train/kept_rollouts"] > 0 and a["reward/em"] == b["reward/em"]
    ga = load_file(str(tmp_path / "grads-single" / "step-1.safetensors"))
    gb = load_file(str(tmp_path / "grads-dp" / "step-1.safetensors"))
    assert ga.keys() == gb.keys() and all(g.dtype == torch.float32 for g in gb.values())
    errs = {k: float((ga[k] - gb[k]).norm() / ga[k].norm().clamp(min=1e-30)) for k in ga}
    assert max(errs.values()) < 0.05, max(errs.items(), key=lambda kv: kv[1])  # bf16 keeps ~3 significant digits
    wb = weights(list_checkpoints(tmp_path / "auto")[-1])
    assert all(w.dtype == torch.float32 for w in wb.values())
    ob = torch.load(list_checkpoints(tmp_path / "auto")[-1] / "optimizer.pt", weights_only=False)
    assert all(v["exp_avg"].dtype == torch.float32 for v in ob["state"].values())


def test_shard_and_merge():
    assert [Dist(r, 2).shard(4) for r in (0, 1)] == [slice(0, 2), slice(2, 4)]
    with pytest.raises(ConfigError, match="questions_per_step: 5 does not split evenly over 2 ranks"):
        Dist(0, 2).shard(5)
    merged = merge_metrics([({"a": 1.0, "stop_x": 1.0}, 3.0), ({"a": 0.0}, 1.0)])
    assert merged == {"a": 0.75, "stop_x": 0.75}
    assert Dist().sum(2.5) == 2.5 and Dist().gather({"x": 1}) == [{"x": 1}]


def test_world_size_one_needs_no_process_group(monkeypatch):
    from searche1.distributed import init_distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed("cpu") == Dist() and not torch.distributed.is_initialized()


def test_gpu_ranks_open_nccl_with_gloo_for_cpu_tensors_on_their_own_gpu(monkeypatch):
    """On GPUs the default group is ``cpu:gloo,cuda:nccl`` (NCCL alone cannot reduce the loops' CPU scalars) and
    each rank first makes ``cuda:LOCAL_RANK`` current (LOCAL_RANK, not RANK: on a second node RANK starts at 8)."""
    from searche1 import distributed

    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("RANK", "11")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.setdefault("device", i))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, timeout: calls.setdefault("backend", backend))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 11)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 16)
    assert distributed.init_distributed("cuda") == Dist(11, 16)
    assert calls == {"device": 3, "backend": "cpu:gloo,cuda:nccl"}
    calls.clear()
    assert distributed.init_distributed("cpu") == Dist(11, 16) and calls == {"backend": "gloo"}
    assert distributed.process_group_backend("cuda:3") == "cpu:gloo,cuda:nccl"


SHARED_SCRIPT = textwrap.dedent("""
    import os
    from pathlib import Path
    from searche1.distributed import check_shared_dir, init_distributed
    from searche1.errors import ConfigError
    d = init_distributed("cpu")
    out = Path({dirs!r}[d.rank])  # one folder for all ranks (a shared filesystem), or one per rank (node-local)
    try:
        check_shared_dir(d, out)
        print("shared")
    except ConfigError as e:
        print("refused:", e)
""")  # no destroy_process_group here: init_distributed's exit hook does it (else gloo aborted ~1 exit in 2)


@pytest.mark.parametrize("local", [False, True], ids=["shared", "node-local"])
def test_run_folder_must_be_shared_by_all_ranks(tmp_path, local):
    """On several nodes every rank reads rank 0's checkpoints and phase outputs: a run folder that another rank
    cannot see (node-local disks, simulated by a folder per rank) fails on every rank, naming those ranks."""
    dirs = [str(tmp_path / "a"), str(tmp_path / ("b" if local else "a"))]
    (tmp_path / "b").mkdir()
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, "-c", SHARED_SCRIPT.format(dirs=dirs)], text=True,
                              env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in (0, 1)]
    outs = [p.communicate(timeout=120)[0].strip().splitlines()[-1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs  # a clean exit, whatever the check said
    if local:
        assert all(o.startswith("refused: --out") and "rank(s) [1] of 2 do not see" in o and "fix: --out on a "
                   "shared filesystem" in o for o in outs), outs
    else:
        assert outs == ["shared", "shared"] and not any((tmp_path / "a").iterdir())  # the check file is gone


def test_ranks_need_divisible_questions(tmp_path):
    """A config that cannot be split fails on every rank with the field named (checked in one process here)."""
    cfg = make_config(tmp_path, questions_per_step=3)
    assert Path(tmp_path / "model").is_dir()
    with pytest.raises(ConfigError, match="does not split evenly over 2 ranks"):
        Dist(1, 2).shard(cfg.grpo.questions_per_step)


def launcher_and_config(tmp_path: Path, name: str) -> Path:
    """The venv's ``name`` launcher (the test skips without it), after writing a 2-step train config to c.yaml."""
    import shutil

    import yaml

    from searche1.config import to_dict

    launcher = shutil.which(name, path=str(Path(sys.executable).parent))
    if launcher is None:
        pytest.skip(f"{name} is not installed")
    cfg = to_dict(make_config(tmp_path, steps=2, questions_per_step=2))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return Path(launcher)


def test_accelerate_launch_runs_the_train_command(tmp_path):
    """The documented launch: `accelerate launch --multi_gpu --num_processes 2 -m searche1 train` (gloo on CPU)."""
    launcher = launcher_and_config(tmp_path, "accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()),
           "-m", "searche1", "train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]
    assert [c.name for c in list_checkpoints(tmp_path / "run")] == ["step-000001", "step-000002"]


def test_torchrun_on_two_nodes_runs_the_train_command(tmp_path):
    """The documented multi-node launch, two "nodes" on this machine: one `torchrun --nnodes 2 --node_rank N
    --nproc_per_node 1` per node (so LOCAL_RANK is 0 on both and RANK counts across nodes) sharing one run folder;
    then both resume it."""
    launcher = launcher_and_config(tmp_path, "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def two_nodes(*extra: str) -> None:
        port = str(free_port())
        procs = [subprocess.Popen([launcher, "--nnodes", "2", "--node_rank", str(n), "--nproc_per_node", "1",
                                   "--master_addr", "127.0.0.1", "--master_port", port, "-m", "searche1", "train",
                                   "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), *extra],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for n in (0, 1)]
        outs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)

    two_nodes()
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]
    assert [c.name for c in list_checkpoints(tmp_path / "run")] == ["step-000001", "step-000002"]
    two_nodes("--resume", "--set", "grpo.steps=3")  # both nodes resume from rank 0's checkpoint
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3]


OFSD_RANK_SCRIPT = textwrap.dedent("""
    import sys, json
    sys.path.insert(0, {tests!r})
    from test_ofsd_phase import QS, ROLLOUT, cfg, parity_reward
    from tiny import tiny_model, tiny_retriever, tiny_tokenizer
    from searche1.distributed import init_distributed
    from searche1.ofsd.phase import run_ofsd_phase
    from searche1.sharding import shard_model
    d = init_distributed("cpu")
    tok = tiny_tokenizer()
    c = cfg(epochs=2, teacher_mode={mode!r}, topk=32, **{extra!r})
    shard = (lambda m: shard_model(m, d, "cpu")) if c.sharding == "full" else None
    out = run_ofsd_phase(tiny_model(tok), tok, tiny_retriever(), QS, c, ROLLOUT, {work!r}, progress=False,
                         episode_reward=parity_reward, dist=d, before_training=shard)
    if d.is_main:
        json.dump(out, open({metrics!r}, "w"))
""")


# 3 pairs a step, one per micro-batch: rank 0 runs two, rank 1 one and an idle pass (lockstep under FSDP)
FSDP_OFSD = {"sharding": "full", "pairs_per_step": 3, "micro_batch_size": 1}


@pytest.mark.parametrize("mode, extra", [("exact", {}), ("topk", {}), ("exact", {"questions": 2, "min_pairs": 5}),
                                         ("exact", FSDP_OFSD), ("topk", FSDP_OFSD)],
                         ids=["exact", "topk", "min-pairs", "exact-fsdp", "topk-fsdp"])
def test_ofsd_phase_two_gloo_ranks_match_one_process(tmp_path, monkeypatch, mode, extra):
    """The OFSD phase data-parallel: same rollouts, pairs and per-step full gradients as one process; with
    ``min_pairs`` the ranks also extend the sampling by the same batches of questions; with ``sharding: full``
    (FSDP, the model sharded after the teacher copy) a rank without a pair in a step joins with an idle pass."""
    from test_ofsd_phase import QS, ROLLOUT, cfg, parity_reward
    from tiny import tiny_model, tiny_retriever, tiny_tokenizer

    from searche1.ofsd.phase import run_ofsd_phase

    tok = tiny_tokenizer()
    monkeypatch.setenv("SEARCHE1_GRAD_DUMP", str(tmp_path / "grads-single"))
    a = run_ofsd_phase(tiny_model(tok), tok, tiny_retriever(), QS, cfg(epochs=2, teacher_mode=mode, topk=32, **extra),
                       ROLLOUT, tmp_path / "single", progress=False, episode_reward=parity_reward)
    launch_ranks(OFSD_RANK_SCRIPT.format(tests=str(TESTS), mode=mode, extra=extra, work=str(tmp_path / "dp"),
                                         metrics=str(tmp_path / "dp.json")), world=2, grads=tmp_path / "grads-dp")
    b = json.loads((tmp_path / "dp.json").read_text())
    assert a["ofsd/pairs"] >= 3 and a["ofsd/steps"] >= 4  # odd pair counts leave one rank idle in some steps
    if "min_pairs" in extra:
        assert a["ofsd/batches"] >= 2  # the first 2 questions gave fewer than 5 pairs
    for k in ("ofsd/rollouts", "ofsd/reward_em", "ofsd/pairs", "ofsd/steps", "ofsd/train_tokens",
              "ofsd/teacher_bytes_per_token", "ofsd/questions", "ofsd/batches"):
        assert b[k] == a[k], k
    for k in ("ofsd/kl_first", "ofsd/kl_last", "ofsd/loss", "ofsd/grad_norm"):
        assert b[k] == pytest.approx(a[k], rel=1e-4), k
    n = int(a["ofsd/steps"])
    assert_same_grads(tmp_path, range(1, n + 1), "ofsd-")
    share = b["mem/optimizer_state_mb"] / a["mem/optimizer_state_mb"]  # rank 0's AdamW state against one process's
    assert (0.3 < share < 0.7) if extra.get("sharding") == "full" else share == pytest.approx(1.0)
    if mode == "topk":  # each rank cached only the pairs it owns
        assert sorted(p.name for p in (tmp_path / "dp").iterdir()) == ["teacher-rank0", "teacher-rank1"]


PIPELINE_RANK_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_pipeline import pipeline_config
    from test_train import parity_reward
    from searche1.pipeline import run_pipeline
    cfg = pipeline_config(Path({root!r}))
    for section, field, value in {overrides!r}:
        setattr(getattr(cfg, section) if section else cfg, field, value)
    run_pipeline(cfg, Path({out!r}), resume={resume!r}, progress=False, episode_reward=parity_reward)
""")


def test_pipeline_with_ofsd_runs_on_two_ranks_and_resumes(tmp_path):
    """GRPO → OFSD → GRPO under 2 gloo ranks: the OFSD phase sees the one-process rollouts and pairs; rank 0 alone
    writes the state; a resumed launch finds every phase done."""
    from test_pipeline import pipeline_config

    from searche1.pipeline import run_pipeline

    run_pipeline(pipeline_config(tmp_path), tmp_path / "single", progress=False, episode_reward=parity_reward)
    single = json.loads((tmp_path / "single" / "pipeline.json").read_text())
    script = dict(tests=str(TESTS), root=str(tmp_path), out=str(tmp_path / "dp"), overrides=[])
    launch_ranks(PIPELINE_RANK_SCRIPT.format(**script, resume=False), world=2, grads=tmp_path / "g")
    dp = json.loads((tmp_path / "dp" / "pipeline.json").read_text())
    assert [p["kind"] for p in dp["phases"]] == ["grpo", "ofsd", "grpo"]
    a, b = single["phases"][1]["metrics"], dp["phases"][1]["metrics"]
    assert a["ofsd/rollouts"] == b["ofsd/rollouts"] == 9
    for k in ("ofsd/reward_em", "ofsd/pairs", "ofsd/steps"):
        assert b[k] == a[k], k
    assert (tmp_path / "dp" / "phase-01-ofsd" / "model" / "model.safetensors").is_file()
    assert [r["step"] for r in read_metrics(tmp_path / "dp" / "phase-02-grpo")] == [1, 2]
    before = (tmp_path / "dp" / "pipeline.json").read_text()
    launch_ranks(PIPELINE_RANK_SCRIPT.format(**script, resume=True), world=2, grads=tmp_path / "g")
    assert (tmp_path / "dp" / "pipeline.json").read_text() == before


def test_pipeline_with_fsdp_ofsd_matches_one_process(tmp_path, monkeypatch):
    """ofsd.sharding: full (and grpo.sharding: full) through the pipeline on 2 gloo ranks: the sampler is an
    unsharded copy, the model is sharded after the teacher copy, and rank 0 saves the gathered weights: the same
    pairs, KL and (to AdamW rounding) weights as one process."""
    from test_pipeline import pipeline_config

    from searche1.pipeline import run_pipeline

    overrides = [("", "schedule", ["grpo", "ofsd"]), ("grpo", "sharding", "full"), ("ofsd", "sharding", "full")]
    cfg = pipeline_config(tmp_path)
    for section, field, value in overrides:
        setattr(getattr(cfg, section) if section else cfg, field, value)
    monkeypatch.setenv("SEARCHE1_GRAD_DUMP", str(tmp_path / "grads-single"))
    run_pipeline(cfg, tmp_path / "single", progress=False, episode_reward=parity_reward)
    launch_ranks(PIPELINE_RANK_SCRIPT.format(tests=str(TESTS), root=str(tmp_path), out=str(tmp_path / "dp"),
                                             overrides=overrides, resume=False), world=2, grads=tmp_path / "grads-dp")
    a, b = (json.loads((tmp_path / r / "pipeline.json").read_text())["phases"][1]["metrics"] for r in ("single", "dp"))
    assert a["ofsd/pairs"] >= 1 and a["ofsd/steps"] >= 1
    for k in ("ofsd/rollouts", "ofsd/reward_em", "ofsd/pairs", "ofsd/steps", "ofsd/train_tokens"):
        assert b[k] == a[k], k
    for k in ("ofsd/kl_first", "ofsd/kl_last", "ofsd/grad_norm"):
        assert b[k] == pytest.approx(a[k], rel=1e-4), k
    assert_same_grads(tmp_path, range(1, int(a["ofsd/steps"]) + 1), "ofsd-")  # every OFSD step's full gradient
    wa, wb = (load_file(str(tmp_path / r / "phase-01-ofsd" / "model" / "model.safetensors")) for r in ("single", "dp"))
    start = tmp_path / "dp" / "phase-00-grpo" / "checkpoints" / "step-000002"  # the GRPO output: OFSD's start
    w0 = load_file(str(start / "model.safetensors"))
    assert wa.keys() == wb.keys() == w0.keys() and all(w.dtype == torch.float32 for w in wb.values())
    moved = max(float((wb[k] - w0[k]).abs().max()) for k in wb)
    gap = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert moved > 0.5 * cfg.ofsd.lr and gap < 0.1 * moved  # the saved weights are the trained ones (gap ~3e-6)

