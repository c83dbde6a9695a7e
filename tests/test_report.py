"""searche1.report: markdown + PNG plots from fake run folders (no model, no training)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from searche1.errors import DataError  # noqa: E402
from searche1.report import load_run, write_report  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _eval_json(em_nq: float, em_hp: float, searches: float = 1.5, fmt: float = 0.9) -> dict:
    ds = {"nq": {"em": em_nq, "f1": em_nq + 0.1, "n": 8, "searches": searches, "valid_format": fmt},
          "hotpotqa": {"em": em_hp, "f1": em_hp + 0.1, "n": 8, "searches": searches + 1, "valid_format": fmt}}
    avg = {k: round((ds["nq"][k] + ds["hotpotqa"][k]) / 2, 4) for k in ("em", "f1", "searches", "valid_format")}
    return {"mode": "agent", "datasets": ds, "average": avg, "settings": {"limit": 8}}


def _dev(ev: dict) -> dict:
    out = {f"dev/{n}/em": d["em"] for n, d in ev["datasets"].items()}
    return {**out, "dev/em": ev["average"]["em"], "dev/f1": ev["average"]["f1"],
            "dev/searches": ev["average"]["searches"], "dev/valid_format": ev["average"]["valid_format"]}


def _grpo_run(d: Path, steps: int, planned: int, *, dev_at: dict[int, tuple[float, float]], cut: bool = False,
              reward0: float = 0.1) -> None:
    """A GRPO run folder: config.json, metrics.jsonl (step 0 = dev eval only), evals/step-N.json."""
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"grpo": {"steps": planned, "eval_every": 2}}))
    lines = []
    for step in range(steps + 1):
        row: dict = {"step": step}
        if step > 0:
            row.update({"reward/em": "nan" if step == 2 else reward0 + 0.1 * step, "reward/f1": reward0 + 0.12 * step,
                        "rollout/searches": 1.0 + 0.1 * step, "rollout/valid_format": 0.5 + 0.1 * step,
                        "loss/policy": -0.01, "grad/norm": 1.0, "time/rollout_s": 2.0, "time/train_s": 1.0,
                        "time/step_s": 3.0})
        if step in dev_at:
            ev = _eval_json(*dev_at[step])
            (d / "evals").mkdir(exist_ok=True)
            (d / "evals" / f"step-{step}.json").write_text(json.dumps(ev))
            row.update(_dev(ev))
        lines.append(json.dumps(row))
    text = "\n".join(lines) + "\n"
    if cut:  # a run killed while writing a line
        text += '{"step": %d, "reward/em": 0.' % (steps + 1)
    (d / "metrics.jsonl").write_text(text)


def _assert_png(path: Path) -> None:
    assert path.is_file(), path
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC, path
    assert head[12:16] == b"IHDR"
    w, h = struct.unpack(">II", head[16:24])
    assert w > 100 and h > 100


@pytest.fixture
def grpo_run(tmp_path: Path) -> Path:
    run = tmp_path / "grpo-run"
    _grpo_run(run, steps=4, planned=4, dev_at={0: (0.1, 0.0), 2: (0.25, 0.125), 4: (0.5, 0.25)}, cut=True)
    return run


@pytest.fixture
def pipeline_run(tmp_path: Path) -> Path:
    run = tmp_path / "pipe-run"
    _grpo_run(run / "phase-00-grpo", steps=3, planned=3, dev_at={0: (0.0, 0.0), 3: (0.25, 0.125)})
    ofsd = {"ofsd/pairs": 6.0, "ofsd/steps": 2.0, "ofsd/kl_first": 0.5, "ofsd/kl_last": 0.25, "ofsd/kl": 0.25,
            "ofsd/reward_em": 0.3, "time/ofsd_s": 4.2}
    (run / "phase-01-ofsd").mkdir()
    (run / "phase-01-ofsd" / "metrics.json").write_text(json.dumps(ofsd))
    _grpo_run(run / "phase-02-grpo", steps=1, planned=3, dev_at={0: (0.5, 0.25)}, reward0=0.4, cut=True)
    state = {"schedule": ["grpo", "ofsd", "grpo", "ofsd"],
             "phases": [{"index": 0, "kind": "grpo", "model": "x", "seconds": 12.5, "metrics": {}},
                        {"index": 1, "kind": "ofsd", "model": "y", "seconds": 3.0, "metrics": ofsd}]}
    (run / "pipeline.json").write_text(json.dumps(state))
    (run / "config.json").write_text(json.dumps({"schedule": state["schedule"]}))
    return run


def test_grpo_run_report(grpo_run: Path):
    report = write_report(grpo_run)
    assert report == grpo_run / "report" / "report.md"
    for name in ("reward.png", "dev_em.png", "valid_format.png", "searches.png", "eval_em.png"):
        _assert_png(report.parent / name)
        assert f"]({name})" in report.read_text()  # embedded with a relative link
    assert not (report.parent / "ofsd_kl.png").exists()  # no OFSD phase: no KL plot
    assert not (report.parent / "sampler_gap.png").exists()  # the sampler was the trainer: no gap logged
    md = report.read_text()
    assert f"# Run report: `{grpo_run}`" in md
    assert "GRPO run." in md
    # summary: 4/4 steps (the cut step-5 line skipped), ~12 s summed from time/step_s,
    # reward 0.200 → 0.500 (the "nan" step skipped), dev EM 0.050 → 0.375
    row = next(line for line in md.splitlines() if line.startswith("| 0 | grpo"))
    assert "| done | 4/4 | ~12 |" in row
    assert "| 0.200 | 0.500 | 0.050 | 0.375 |" in row
    # eval tables: latest (step 4) first, then the first one (step 0)
    assert md.index("**step 4**") < md.index("**step 0**")
    assert "| nq | 8 | 0.500 | 0.600 | 1.50 | 0.900 |" in md
    assert "| **average** |  | 0.375 |" in md
    assert "| hotpotqa | 8 | 0.000 | 0.100 | 2.50 | 0.900 |" in md


def test_sampler_gap_plot_when_the_gap_is_logged(tmp_path: Path):
    """A run whose sampler was not the trainer (rollout/logprob_mismatch, and TIS weights) gets the gap plot."""
    run = tmp_path / "r"
    _grpo_run(run, steps=3, planned=3, dev_at={})
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows[1:]:
        r.update({"rollout/logprob_mismatch": 0.01 * r["step"], "loss/is_weight_mean": 1.0 + 0.001 * r["step"]})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = write_report(run)
    _assert_png(report.parent / "sampler_gap.png")
    assert "](sampler_gap.png)" in report.read_text() and "### Sampler vs trainer" in report.read_text()


def test_cut_line_and_nan_values_are_skipped(grpo_run: Path):
    run = load_run(grpo_run)
    (ph,) = run.phases
    assert [r["step"] for r in ph.rows] == [0, 1, 2, 3, 4]
    assert ph.rows[2]["reward/em"] == "nan"
    assert ph.status == "done" and ph.planned_steps == 4
    assert [e.label for e in run.evals] == ["step 0", "step 2", "step 4"]


def test_stopped_run_and_custom_out_dir(tmp_path: Path):
    run = tmp_path / "r"
    _grpo_run(run, steps=2, planned=10, dev_at={})  # no dev eval at all
    out = tmp_path / "elsewhere" / "rep"
    report = write_report(str(run), out_dir=str(out))
    assert report == out / "report.md"
    md = report.read_text()
    assert "stopped at 2/10" in md and "| 2/10 |" in md
    for name in ("reward.png", "valid_format.png", "searches.png"):
        _assert_png(out / name)
    for name in ("dev_em.png", "eval_em.png", "ofsd_kl.png"):  # data absent: plot skipped, not linked
        assert not (out / name).exists() and name not in md
    assert "## Evaluation" not in md


def test_pipeline_report(pipeline_run: Path):
    run = load_run(pipeline_run)
    assert [(p.index, p.kind, p.status) for p in run.phases] == [
        (0, "grpo", "done"), (1, "ofsd", "done"), (2, "grpo", "unfinished (step 1/3)"), (3, "ofsd", "not started")]
    assert [p.offset for p in run.phases] == [0, 3, 3, 4]  # global step axis; OFSD sits between the GRPO phases
    assert [e.label for e in run.evals] == ["phase 0 step 0", "phase 0 step 3", "phase 2 step 0"]

    report = write_report(pipeline_run)
    for name in ("reward.png", "dev_em.png", "valid_format.png", "searches.png", "ofsd_kl.png", "eval_em.png"):
        _assert_png(report.parent / name)
    md = report.read_text()
    assert "schedule: grpo → ofsd → grpo → ofsd" in md
    assert "| 0 | grpo | done | 3/3 | 12 | 0.200 | 0.400 | 0.000 | 0.188 |" in md
    assert "| 1 | ofsd | done | 2 | 3 |" in md and "pairs 6, sampling EM 0.300, KL 0.5000 → 0.2500" in md
    assert "| 2 | grpo | unfinished (step 1/3) | 1/3 | ~3 | 0.500 | 0.500 | 0.375 | 0.375 |" in md
    assert "| 3 | ofsd | not started |" in md
    assert "| **all** | | | 4 GRPO | ~18 | 0.200 | 0.500 | 0.000 | 0.375 |" in md
    assert md.index("**phase 2 step 0**") < md.index("**phase 0 step 0**")  # latest eval first


def test_final_eval_is_latest_and_ofsd_history(pipeline_run: Path):
    (pipeline_run / "final_eval.json").write_text(json.dumps(_eval_json(0.625, 0.5)))
    (pipeline_run / "eval-direct.json").write_text(json.dumps({**_eval_json(0.125, 0.0), "mode": "direct"}))
    (pipeline_run / "eval-broken.json").write_text('{"datasets": ')  # unreadable: ignored
    m = pipeline_run / "phase-01-ofsd" / "metrics.json"
    m.write_text(json.dumps({**json.loads(m.read_text()), "ofsd/kl_steps": [0.5, 0.4, "nan", 0.25]}))
    run = load_run(pipeline_run)
    assert [e.label for e in run.evals][-2:] == ["eval-direct", "final_eval"]
    report = write_report(pipeline_run)
    md = report.read_text()
    assert "**final_eval** (`final_eval.json`, mode agent)" in md
    assert "| nq | 8 | 0.625 |" in md
    _assert_png(report.parent / "ofsd_kl.png")
    _assert_png(report.parent / "eval_em.png")


def test_many_evals_are_subsampled_in_the_chart(tmp_path: Path):
    run = tmp_path / "r"
    _grpo_run(run, steps=20, planned=20, dev_at={s: (s / 40, s / 80) for s in range(0, 21, 2)})
    md = write_report(run).read_text()
    assert "The EM chart shows 8 of the 11 evaluations" in md
    _assert_png(run / "report" / "eval_em.png")


def test_eval_only_folder_and_stale_plots_removed(tmp_path: Path):
    run = tmp_path / "evals-only"
    run.mkdir()
    (run / "eval.json").write_text(json.dumps(_eval_json(0.25, 0.5)))
    out = run / "report"
    out.mkdir()
    (out / "reward.png").write_bytes(b"old")  # from an earlier report of other data
    report = write_report(run)
    _assert_png(out / "eval_em.png")
    assert not (out / "reward.png").exists()
    assert "| **average** |  | 0.375 |" in report.read_text()


def test_empty_folder_raises_data_error(tmp_path: Path):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "config.json").write_text("{}")  # a config alone is no metrics
    with pytest.raises(DataError) as e:
        write_report(empty)
    assert str(empty) in str(e.value)
    assert "metrics.jsonl" in str(e.value) and "pipeline.json" in str(e.value)
    assert not (empty / "report").exists()
    with pytest.raises(DataError, match="no such run folder"):
        write_report(tmp_path / "missing")


def test_out_that_is_a_file_is_a_data_error(tmp_path: Path):
    """`searche1 report RUN --out FILE` was a FileExistsError traceback from mkdir."""
    run = tmp_path / "evals-only"
    run.mkdir()
    (run / "eval.json").write_text(json.dumps(_eval_json(0.25, 0.5)))
    with pytest.raises(DataError, match="eval.json: is a file; the report is a folder") as e:
        write_report(run, run / "eval.json")
    assert "fix: give --out a folder" in str(e.value)


def test_unstarted_pipeline_raises_data_error(tmp_path: Path):
    run = tmp_path / "p"
    (run / "phase-00-grpo").mkdir(parents=True)
    (run / "pipeline.json").write_text(json.dumps({"schedule": ["grpo", "ofsd"], "phases": []}))
    with pytest.raises(DataError, match="no metrics found"):
        write_report(run)


def test_a_schedule_opening_with_ofsd_gets_its_phase_line(tmp_path: Path, monkeypatch):
    """schedule [ofsd, grpo]: the first phase's dashed OFSD line is drawn too."""
    import matplotlib.axes

    lines = []
    real = matplotlib.axes.Axes.axvline
    monkeypatch.setattr(matplotlib.axes.Axes, "axvline",
                        lambda self, x=0, **kw: lines.append(kw.get("label")) or real(self, x, **kw))
    run = tmp_path / "run"
    (run / "phase-00-ofsd").mkdir(parents=True)
    (run / "phase-00-ofsd" / "metrics.json").write_text(json.dumps(
        {"ofsd/pairs": 4.0, "ofsd/steps": 2.0, "ofsd/kl_first": 0.5, "ofsd/kl_last": 0.3, "ofsd/questions": 16.0}))
    _grpo_run(run / "phase-01-grpo", steps=3, planned=3, dev_at={0: (0.0, 0.0), 3: (0.25, 0.125)})
    (run / "pipeline.json").write_text(json.dumps({"schedule": ["ofsd", "grpo"], "phases": [
        {"index": 0, "kind": "ofsd", "seconds": 3}, {"index": 1, "kind": "grpo", "seconds": 9}]}))
    md = write_report(run).read_text()
    assert "OFSD phase" in lines
    assert "pairs 4 from 16 questions" in md  # a phase that min_pairs extended says how far
