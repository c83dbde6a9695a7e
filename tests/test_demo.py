"""The demo end to end on the synthetic world with a tiny random model (< 1 minute), its config, and resumption."""

import json
from pathlib import Path

import yaml

from searche1.config import from_dict, load_config, to_dict
from searche1.demo import DemoConfig, run_demo

ROOT = Path(__file__).resolve().parents[1]


def tiny_demo_config(model_dir: Path) -> DemoConfig:
    return load_config(DemoConfig, None, {
        "model.name_or_path": str(model_dir), "model.train_layers": 1, "model.device": "cpu",
        "rollout.max_turn_tokens": 8, "rollout.max_total_tokens": 700, "rollout.batch_size": 8,
        "rollout.max_searches": 1,
        "warmup.num_examples": 4, "warmup.batch_size": 2, "warmup.device": "cpu",
        "grpo.steps": 1, "grpo.questions_per_step": 2, "grpo.group_size": 2, "grpo.micro_batch_size": 2,
        "ofsd.questions": 2, "ofsd.samples_per_question": 2, "ofsd.epochs": 1, "eval_limit": 2,
    })


def test_demo_runs_end_to_end_on_the_synthetic_world(tmp_path, capsys):
    from tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    tiny_model(tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    out = tmp_path / "demo"
    summary = run_demo(tiny_demo_config(tmp_path / "model"), out=out, synthetic=True, progress=False)
    for name in ("world/corpus.jsonl", "index", "warmup/config.json", "eval-base.json", "eval-before.json",
                 "eval-after.json",
                 "run/pipeline.json", "demo.json"):
        assert (out / name).exists(), name
    state = json.loads((out / "run" / "pipeline.json").read_text())
    assert [p["kind"] for p in state["phases"]] == ["grpo", "ofsd"]
    before = json.loads((out / "eval-before.json").read_text())
    assert set(before["datasets"]) and all(d["n"] == 2 for d in before["datasets"].values())
    assert summary["after"]["em"] == json.loads((out / "eval-after.json").read_text())["average"]["em"]
    assert set(summary["timings_s"]) >= {"warm-up", "GRPO + OFSD", "evaluation after"}
    printed = capsys.readouterr().out
    assert "GRPO + OFSD" in printed and "average EM" in printed
    # a second run finds every stage done and reuses it
    again = run_demo(tiny_demo_config(tmp_path / "model"), out=out, synthetic=True, progress=False)
    assert again["after"] == summary["after"] and again["timings_s"]["warm-up"] < 1.0


def test_demo_yaml_equals_the_built_in_defaults():
    raw = yaml.safe_load((ROOT / "configs" / "demo-cpu.yaml").read_text())
    assert to_dict(from_dict(DemoConfig, raw)) == to_dict(DemoConfig())


def test_gpu_demo_yaml_changes_only_the_gpu_sizes():
    """configs/demo-gpu.yaml (what benchmarks/gpu_check.py ran on an H100) is the CPU demo with these sizes only."""
    gpu = to_dict(load_config(DemoConfig, ROOT / "configs" / "demo-gpu.yaml"))
    cpu = to_dict(DemoConfig())
    changed = {f"{k}.{kk}" if isinstance(v, dict) else k for k, v in gpu.items()
               for kk in (v if isinstance(v, dict) else [None]) if (v if kk is None else v[kk]) != (
                   cpu[k] if kk is None else cpu[k][kk])}
    assert changed == {"model.train_layers", "rollout.batch_size", "warmup.num_examples", "warmup.batch_size",
                       "grpo.steps", "grpo.questions_per_step", "grpo.micro_batch_size", "grpo.save_every",
                       "ofsd.questions", "eval_limit"}
    assert gpu["model"]["train_layers"] == 0 and gpu["grpo"]["questions_per_step"] == 32


def test_partial_sections_keep_the_demo_defaults():
    cfg = load_config(DemoConfig, None, {"grpo.steps": 7})
    assert cfg.grpo.steps == 7 and cfg.grpo.questions_per_step == DemoConfig().grpo.questions_per_step == 4
