from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from searche1.config import describe, from_dict, load_config, to_dict
from searche1.errors import ConfigError
from searche1.retrieval.config import RetrievalConfig


@dataclass
class Inner:
    lr: float = 1e-5
    kind: Literal["a", "b"] = "a"

    def validate(self):
        if self.lr <= 0:
            raise ConfigError("lr: must be > 0 (fix: use e.g. 5e-5)")


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    files: list[Path] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    maybe: int | None = None


def test_from_dict_nested_and_types():
    cfg = from_dict(Outer, {"name": "run", "steps": 3, "files": "a.jsonl", "inner": {"lr": "5e-5", "kind": "b"}})
    assert cfg.steps == 3 and cfg.files == [Path("a.jsonl")]
    assert cfg.inner.lr == pytest.approx(5e-5) and cfg.inner.kind == "b"
    assert to_dict(cfg)["files"] == ["a.jsonl"]


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"stepz": 3}, "stepz: unknown field of Outer (did you mean 'steps'?)"),
        ({"steps": "many"}, "steps: expected an integer"),
        ({"steps": True}, "steps: expected an integer"),
        ({"inner": {"kind": "c"}}, "inner.kind: 'c' is not one of 'a', 'b'"),
        ({"inner": {"lr": -1.0}}, "inner.lr: must be > 0"),
        ({"inner": 3}, "inner: expected a mapping"),
        ({"maybe": "x"}, "maybe: expected int"),
    ],
)
def test_from_dict_errors_name_the_field(data, needle):
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, data)
    assert needle in str(e.value)


def test_load_config_yaml_file_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: demo\ninner:\n  lr: 1.0e-4\n")
    cfg = load_config(Outer, p, overrides={"inner.kind": "b", "steps": 7})
    assert (cfg.name, cfg.steps, cfg.inner.kind) == ("demo", 7, "b")
    p.write_text("inner:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: inner\.lrr: unknown field .*did you mean 'lr'"):
        load_config(Outer, p)
    p.write_text("[1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_retrieval_config_cross_field_rules():
    with pytest.raises(ConfigError, match="set exactly one of `index`"):
        from_dict(RetrievalConfig, {})
    with pytest.raises(ConfigError, match="set exactly one"):
        from_dict(RetrievalConfig, {"index": "x", "url": "http://y"})
    with pytest.raises(ConfigError, match="topk: unknown field of RetrievalConfig"):
        from_dict(RetrievalConfig, {"index": "x", "topk": 3})  # passages per search live in rollout.topk
    assert from_dict(RetrievalConfig, {"url": "http://127.0.0.1:8000"}).cache_size == 100_000


def test_describe_lists_nested_fields():
    rows = {r[0]: r for r in describe(Outer)}
    assert "inner.lr" in rows and rows["steps"][2] == "10"


def test_configuration_reference_doc_is_current():
    from pathlib import Path

    from searche1.cli import render_config_reference

    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert doc.read_text() == render_config_reference() + "\n", "regenerate: searche1 config-reference > docs/configuration.md"


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")))
def test_every_shipped_config_loads(name):
    from searche1.demo import DemoConfig
    from searche1.pipeline import PipelineConfig

    cfg = load_config(DemoConfig if name.startswith("demo") else PipelineConfig, CONFIGS / name)
    assert cfg.schedule and cfg.grpo.group_size == 5


def test_variants_extend_the_search_e1_config():
    from searche1.pipeline import PipelineConfig

    base = load_config(PipelineConfig, CONFIGS / "search-e1-searchqa-cpu.yaml")
    revkl = load_config(PipelineConfig, CONFIGS / "variants" / "grpo-revkl.yaml")
    assert revkl.ofsd.loss == "reverse_kl" and base.ofsd.loss == "forward_kl"
    assert to_dict(revkl.grpo) == to_dict(base.grpo) and revkl.ofsd.epochs == base.ofsd.epochs  # the rest inherited
    assert load_config(PipelineConfig, CONFIGS / "variants" / "distill-at-end.yaml").schedule == ["grpo", "grpo", "ofsd"]


def test_extends_cycle_and_missing_parent(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="makes a cycle"):
        load_config(RetrievalConfig, tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nope.yaml\n")
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(RetrievalConfig, tmp_path / "c.yaml")


def test_unquoted_on_off_reach_on_off_choices(tmp_path):
    """YAML reads `bf16: on` as true: a field whose choices are on/off takes it as "on" (config file and --set)."""
    from searche1.config import load_config
    from searche1.train import TrainConfig

    f = tmp_path / "c.yaml"
    f.write_text("grpo:\n  bf16: on\n")
    assert load_config(TrainConfig, f).grpo.bf16 == "on"
    assert load_config(TrainConfig, f, {"grpo.bf16": False}).grpo.bf16 == "off"  # --set grpo.bf16=off, parsed
    with pytest.raises(ConfigError, match="'c' is not one of"):
        from_dict(Outer, {"inner": {"kind": "c"}})


def test_set_into_an_empty_yaml_section(tmp_path):
    from searche1.train import TrainConfig

    f = tmp_path / "c.yaml"
    f.write_text("grpo:\nrollout:\n  topk: 2\n")  # `grpo:` alone is null
    cfg = load_config(TrainConfig, f, {"grpo.lr": 5e-6})
    assert cfg.grpo.lr == 5e-6 and cfg.rollout.topk == 2
    with pytest.raises(ConfigError, match="--set rollout.topk.x: topk is 2, not a section"):
        load_config(TrainConfig, f, {"rollout.topk.x": 1})


@pytest.mark.parametrize("key, needle", [
    ("grpo.shard_optimizer", "grpo.shard_optimizer: an earlier version's field, replaced by grpo.sharding"),
    ("ofsd.shard_optimizer", "ofsd.shard_optimizer: an earlier version's field, replaced by ofsd.sharding"),
    ("retrieval.topk", "retrieval.topk: an earlier version's field, moved to rollout.topk"),
])
def test_a_config_of_an_earlier_version_names_the_replacement(key, needle):
    """Fields renamed or moved since an earlier version fail with their replacement, not a list of valid fields."""
    from searche1.pipeline import PipelineConfig

    with pytest.raises(ConfigError, match=needle):
        load_config(PipelineConfig, None, {key: True})


def test_a_field_in_the_wrong_section_names_its_section():
    """`lr:` at the top level or `grpo.topk` listed the section's valid fields (or guessed a wrong one)."""
    from searche1.pipeline import PipelineConfig

    with pytest.raises(ConfigError, match="defaults: lr: not a field there; 'lr' is grpo.lr or ofsd.lr"):
        load_config(PipelineConfig, None, {"lr": 1e-5})
    with pytest.raises(ConfigError, match="grpo.topk: not a field there; 'topk' is rollout.topk or ofsd.topk"):
        load_config(PipelineConfig, None, {"grpo.topk": 2})
    with pytest.raises(ConfigError, match="grpo.lrr: unknown field of GRPOConfig .did you mean 'lr'"):
        load_config(PipelineConfig, None, {"grpo.lrr": 2})
