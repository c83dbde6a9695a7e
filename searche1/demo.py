"""`searche1 demo`: the README's main job, the whole method on a CPU in minutes.

    data (searchqa miniature, or a generated synthetic world) → embedded SmolLM2-135M (converted once) → BM25 index
    → dev evaluation of the base model → format warm-up → dev evaluation ("before" RL) → GRPO round → OFSD phase
    → dev evaluation ("after") → a base / warm-up / final table and a report with plots

Every stage leaves its result in ``--out`` and is skipped when that result exists, so an interrupted demo (Ctrl-C)
continues where it stopped when run again: the warm-up and evaluations are written atomically (an interrupted one
restarts), the GRPO round resumes from its newest checkpoint, the pipeline skips finished phases.

The defaults of :class:`DemoConfig` are sized to finish in under 20 minutes on a 2-core laptop-class CPU (README);
``configs/demo-cpu.yaml`` holds the same values (a test keeps them equal). Departures from the paper, for the CPU
budget: a short warm-up (not part of Search-E1, DESIGN §4), one round of GRPO (few steps) + OFSD instead of two,
only the last layers train, passages cut to 64 tokens, 8 dev questions per dataset.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from searche1.data.qa import load_qa_files
from searche1.errors import ConfigError, DataError
from searche1.io import write_json
from searche1.models import ModelConfig
from searche1.ofsd.phase import OFSDConfig
from searche1.paths import searchqa_dir
from searche1.pipeline import PipelineConfig
from searche1.retrieval.config import RetrievalConfig
from searche1.rollout.types import RolloutConfig
from searche1.train import DataConfig, GRPOConfig
from searche1.warmup import WarmupConfig

console = Console(soft_wrap=True)  # no line breaks inside paths


@dataclass
class DemoConfig(PipelineConfig):
    """The demo: a Search-E1 pipeline config plus the warm-up and the size of the before/after evaluation.
    ``retrieval.index`` and ``data.train`` are filled in by the demo (its own index and the data's train split)."""

    schedule: list[str] = field(default_factory=lambda: ["grpo", "ofsd"], metadata={"help": "phases in order"})
    model: ModelConfig = field(default_factory=lambda: ModelConfig(train_layers=10))
    retrieval: RetrievalConfig = field(default_factory=lambda: RetrievalConfig())
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(
        max_turn_tokens=48, max_doc_tokens=64, max_searches=4, topk=3, batch_size=40))
    data: DataConfig = field(default_factory=DataConfig)
    grpo: GRPOConfig = field(default_factory=lambda: GRPOConfig(
        steps=3, questions_per_step=4, group_size=5, lr=1e-5, warmup_steps=1, skip_zero_std_groups=True,
        save_every=1, keep_last=1))
    ofsd: OFSDConfig = field(default_factory=lambda: OFSDConfig(questions=8, min_pairs=2, max_questions=24,
                                                                 samples_per_question=5, epochs=2, lr=1e-5))
    warmup: WarmupConfig = field(default_factory=lambda: WarmupConfig(num_examples=48, batch_size=4, lr=1e-4,
                                                                      max_hops=1))
    eval_limit: int = field(default=8, metadata={"help": "dev questions per dataset in the before/after table"})

    def validate(self) -> None:
        PipelineConfig.validate(self)
        if self.eval_limit < 1:
            raise ConfigError("eval_limit: must be >= 1")


def prepare_data(data: Path | None, out: Path, synthetic: bool) -> Path:
    """Return a folder with corpus.jsonl, train/ and dev/: the given one, searchqa, or a fresh synthetic world."""
    if data is None and not synthetic:
        data = searchqa_dir()
    if data is not None and not synthetic:
        for need in ("corpus.jsonl", "train", "dev"):
            if not (data / need).exists():
                raise DataError(data, f"no {need} in this folder",
                                fix="pass a searchqa-style folder (corpus.jsonl, train/, dev/) to --data")
        return data
    world_dir = out / "world"
    if not (world_dir / "corpus.jsonl").is_file():
        from searche1.data.synth import generate_world, write_world

        console.print("[bold]No searchqa data found[/]: generating a synthetic world (seed 0)")
        write_world(generate_world(seed=0), world_dir, overwrite=True)
    return world_dir


def _stage(name: str, timings: dict, t0: float) -> None:
    timings[name] = round(time.perf_counter() - t0, 1)
    console.print(f"[green]✓[/] {name} ({timings[name]:.0f} s)")


def _evaluate(cfg: DemoConfig, model_dir: Path, dev_files: list[Path], path: Path, progress: bool = True) -> dict:
    """Greedy agent evaluation with the run's search settings, written to ``path``; reused when it exists."""
    if path.is_file():
        return json.loads(path.read_text())
    from searche1.models import load_policy
    from searche1.retrieval.config import make_retriever
    from searche1.train import dev_eval

    model, tok = load_policy(replace(cfg.model, name_or_path=str(model_dir)))
    ecfg = replace(cfg, data=replace(cfg.data, dev=dev_files, dev_limit=cfg.eval_limit))
    dev_eval(model, tok, make_retriever(cfg.retrieval), load_qa_files(dev_files), ecfg, path, progress=progress)
    return json.loads(path.read_text())


def comparison_table(evals: dict[str, dict], title: str) -> Table:
    """EM per dataset for each labelled evaluation, then the average EM, searches per question and valid format."""
    table = Table(title=title)
    table.add_column("dataset")
    table.add_column("n", justify="right")
    for label in evals:
        table.add_column(label, justify="right")
    first = next(iter(evals.values()))
    for name in first["datasets"]:
        table.add_row(name, str(first["datasets"][name].get("n", "")),
                      *[f"{ev['datasets'].get(name, {}).get('em', 0):.3f}" for ev in evals.values()])
    table.add_section()
    for key, label, fmt in (("em", "average EM", "{:.3f}"), ("searches", "searches / question", "{:.2f}"),
                            ("valid_format", "valid format", "{:.2f}")):
        table.add_row(f"[bold]{label}[/]" if key == "em" else label, "",
                      *[fmt.format(ev["average"].get(key, 0)) for ev in evals.values()])
    return table


def run_demo(cfg: DemoConfig | None = None, *, data: Path | None = None, out: Path = Path("runs/demo"),
             synthetic: bool = False, progress: bool = True) -> dict:
    """Run (or continue) the demo in ``out``; returns the summary also written to ``out/demo.json``."""
    from searche1.models import resolve_model_path
    from searche1.pipeline import run_pipeline
    from searche1.retrieval.index import ensure_index
    from searche1.warmup import run_warmup

    cfg = cfg or DemoConfig()
    cfg.validate()
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    data_dir = prepare_data(data, out, synthetic)
    train_files = sorted((data_dir / "train").glob("*.jsonl"))
    dev_files = sorted((data_dir / "dev").glob("*.jsonl"))
    if not train_files or not dev_files:
        raise DataError(data_dir, "train/ or dev/ holds no .jsonl files", fix="pass a searchqa-style folder")
    console.print(f"[bold]data[/] {data_dir}: train {[f.stem for f in train_files]}, dev {[f.stem for f in dev_files]}")
    base = resolve_model_path(cfg.model.name_or_path)
    index_dir = ensure_index(data_dir / "corpus.jsonl", out / "index")
    _stage("data, model and BM25 index", timings, t0)
    cfg = replace(cfg, retrieval=replace(cfg.retrieval, index=index_dir, url=None),
                  data=replace(cfg.data, train=train_files, dev=[], dev_limit=cfg.eval_limit))

    t0 = time.perf_counter()
    console.print(f"[bold]evaluation of the base model[/]: {cfg.eval_limit} dev questions per dataset")
    base_eval = _evaluate(cfg, base, dev_files, out / "eval-base.json", progress)
    _stage("evaluation of the base model", timings, t0)

    t0 = time.perf_counter()
    warm = out / "warmup"
    if not (warm / "config.json").is_file():
        console.print(f"[bold]format warm-up[/]: {cfg.warmup.num_examples} demonstrations (not part of Search-E1)")
        run_warmup(base, index_dir, train_files, warm, cfg.warmup, rollout_cfg=cfg.rollout, overwrite=True,
                   progress=progress)
    _stage("warm-up", timings, t0)

    t0 = time.perf_counter()
    console.print("[bold]evaluation after warm-up[/] (before RL)")
    before = _evaluate(cfg, warm, dev_files, out / "eval-before.json", progress)
    _stage("evaluation before", timings, t0)

    t0 = time.perf_counter()
    console.print(f"[bold]Search-E1[/]: {' → '.join(cfg.schedule)}")
    final = run_pipeline(replace(cfg, model=replace(cfg.model, name_or_path=str(warm))), out / "run", resume=True,
                         progress=progress)
    _stage("GRPO + OFSD", timings, t0)

    t0 = time.perf_counter()
    console.print("[bold]evaluation after[/]")
    after = _evaluate(cfg, final, dev_files, out / "eval-after.json", progress)
    _stage("evaluation after", timings, t0)

    t0 = time.perf_counter()
    report = None
    try:
        from searche1.report import write_report

        report = str(write_report(out / "run"))
    except Exception as e:  # the report is a convenience: never lose the demo's result over it
        console.print(f"[yellow]report skipped[/]: {e}")
    _stage("report", timings, t0)

    console.print(comparison_table({"base": base_eval, "warm-up": before, "GRPO + OFSD": after},
                                   f"Agent EM on {data_dir / 'dev'} (greedy, first {cfg.eval_limit} per dataset)"))
    summary = {"data": str(data_dir), "index": str(index_dir), "final_model": str(final), "report": report,
               "base": base_eval["average"], "before": before["average"], "after": after["average"],
               "timings_s": timings,
               "seconds": round(time.perf_counter() - t_all, 1)}
    write_json(out / "demo.json", summary)
    console.print(f"done in {summary['seconds']:.0f} s; results in {out / 'demo.json'}"
                  + (f", report in {report}" if report else ""))
    return summary
