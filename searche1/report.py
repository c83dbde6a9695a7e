"""Run report: a markdown summary plus PNG plots from a run folder's metrics (``searche1 report RUN_DIR``).

Understood layouts:
* a GRPO run: ``RUN/metrics.jsonl`` (one ``{"step": N, ...}`` object per line; a line cut by a kill is skipped),
  ``RUN/config.json``, optionally ``RUN/evals/step-N.json`` (full ``searche1 eval`` JSON);
* a pipeline run: ``RUN/pipeline.json`` (schedule and finished phases) with ``RUN/phase-NN-grpo/`` (GRPO runs as
  above) and ``RUN/phase-NN-ofsd/metrics.json``; a phase folder missing from ``pipeline.json`` is unfinished;
* any eval JSON: ``RUN/**/evals/*.json``, ``RUN/final_eval.json``, ``RUN/eval*.json``.

GRPO phases are laid end to end on one global step axis; OFSD phases sit between them (vertical lines). A plot whose
data is absent is skipped. Plots use matplotlib ``Figure`` objects (Agg canvas): no global backend or pyplot state.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from searche1.errors import DataError

EXPECTED = ("metrics.jsonl (a GRPO run), pipeline.json with phase-NN-grpo/ and phase-NN-ofsd/ folders (a pipeline "
            "run), or eval JSONs (evals/step-N.json, final_eval.json, eval*.json)")
PLOTS = {  # file: (title, caption), in report order
    "reward.png": ("Training reward", "Rollout EM reward per step with its moving average (and F1)."),
    "dev_em.png": ("Dev EM", "Greedy agent EM on the dev sets at each evaluation step: average and per dataset."),
    "valid_format.png": ("Valid-format rate", "Share of responses that follow the search/answer protocol."),
    "searches.png": ("Searches per question", "Mean search calls per episode, in training rollouts and on dev."),
    "ofsd_kl.png": ("OFSD KL", "Distillation divergence of each OFSD phase (per step, or first vs last epoch)."),
    "sampler_gap.png": ("Sampler vs trainer", "Mean absolute gap between the sampler's and the trainer's log-probs "
                        "of the sampled tokens (a bf16 copy or vLLM samples; rollout/logprob_mismatch), and, with "
                        "grpo.tis_cap, the mean truncated importance weight minus 1."),
    "eval_em.png": ("EM per dataset per phase", "EM of the eval JSONs found in the run folder, per dataset."),
}
MAX_EVAL_GROUPS = 8  # bars per dataset in the EM chart; more evals are subsampled evenly (first and last kept)
_PHASE_DIR = re.compile(r"phase-(\d+)-(grpo|ofsd)$")
_STEP_FILE = re.compile(r"step-(\d+)\.json$")


@dataclass
class Phase:
    index: int
    kind: str  # grpo | ofsd
    status: str  # done | unfinished ... | stopped at N/M | not started
    path: Path | None = None
    rows: list[dict] = field(default_factory=list)  # GRPO: metrics.jsonl rows, one per step, sorted
    metrics: dict = field(default_factory=dict)  # OFSD: the phase's metrics.json
    seconds: float | None = None
    seconds_estimated: bool = False  # summed from time/step_s (phase not recorded as finished)
    offset: int = 0  # global step of this phase's step 0 (GRPO) or where the phase sits (OFSD)
    planned_steps: int | None = None

    @property
    def steps(self) -> int | None:
        s = max((r["step"] for r in self.rows), default=None) if self.kind == "grpo" else \
            _num(self.metrics.get("ofsd/steps"))
        return None if s is None else int(s)


@dataclass
class EvalResult:
    label: str  # "step 10", "phase 2 step 0", "final_eval"
    path: Path
    data: dict
    order: tuple


@dataclass
class Run:
    path: Path
    pipeline: bool
    schedule: list[str]
    phases: list[Phase]
    evals: list[EvalResult]  # oldest first; top-level eval JSONs last, final_eval.json at the very end


# ---------------------------------------------------------------------------------------------------------- reading
def _num(v) -> float | None:
    """A finite float from a metrics value (numbers or strings such as "0.5"); None for NaN, inf, anything else."""
    try:
        f = float(v) if not isinstance(v, bool) else math.nan
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a metrics.jsonl, one per step (the last line of a step wins), sorted; undecodable lines skipped."""
    by_step: dict[int, dict] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
            by_step[int(row["step"])] = {**row, "step": int(row["step"])}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return [by_step[s] for s in sorted(by_step)]


def _grpo_phase(index: int, path: Path, finished: bool | None, seconds: float | None) -> Phase:
    """``finished``: as recorded in pipeline.json; None (a plain GRPO run) = judge by the configured step count."""
    cfg = _read_json(path / "config.json") or {}
    planned = _num(cfg["grpo"].get("steps")) if isinstance(cfg.get("grpo"), dict) else None
    ph = Phase(index, "grpo", "done", path, _read_jsonl(path / "metrics.jsonl"), seconds=seconds,
               planned_steps=None if planned is None else int(planned))
    at = f"{ph.steps or 0}/{ph.planned_steps if ph.planned_steps is not None else '?'}"
    if finished is False:
        ph.status = f"unfinished (step {at})"
    elif finished is None and (ph.planned_steps is None or (ph.steps or 0) < ph.planned_steps):
        ph.status = f"stopped at {at}"
    if seconds is None:
        times = [t for t in (_num(r.get("time/step_s")) for r in ph.rows) if t is not None]
        ph.seconds, ph.seconds_estimated = (sum(times), True) if times else (None, False)
    return ph


def load_run(run_dir: str | Path) -> Run:
    """Everything the report needs from ``run_dir``; raises :class:`DataError` when it holds no metrics at all."""
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(run, "no such run folder", fix=f"pass a run folder holding {EXPECTED}")
    state = _read_json(run / "pipeline.json")
    dirs = {int(m.group(1)): (m.group(2), d) for d in run.iterdir() if (m := _PHASE_DIR.match(d.name)) and d.is_dir()}
    phases: list[Phase] = []
    schedule: list[str] = []
    pipeline = state is not None or bool(dirs)
    if pipeline:
        state = state or {}
        schedule = [str(s) for s in state["schedule"]] if isinstance(state.get("schedule"), list) else []
        done = {int(p["index"]): p for p in state.get("phases", []) if isinstance(p, dict) and "index" in p}
        for i in range(max([len(schedule) - 1, *dirs, *done], default=-1) + 1):
            entry = done.get(i)
            if i in dirs:
                kind, path = dirs[i]
            else:
                kind, path = (str(entry.get("kind")) if entry else schedule[i] if i < len(schedule) else "?"), None
            seconds = _num(entry.get("seconds")) if entry else None
            if kind == "grpo" and path is not None:
                phases.append(_grpo_phase(i, path, entry is not None, seconds))
                continue
            ph = Phase(i, kind, "done" if entry else ("unfinished" if path else "not started"), path, seconds=seconds)
            got = _read_json(path / "metrics.json") if path is not None else None
            ph.metrics = got or (entry.get("metrics") if entry and isinstance(entry.get("metrics"), dict) else {})
            ph.seconds = ph.seconds if ph.seconds is not None else _num(ph.metrics.get("time/ofsd_s"))
            phases.append(ph)
    elif (run / "metrics.jsonl").is_file():
        phases.append(_grpo_phase(0, run, None, None))
    pos = 0
    for ph in phases:  # global step axis: GRPO phases end to end, OFSD phases between them
        ph.offset = pos
        pos += (ph.steps or 0) if ph.kind == "grpo" else 0
    evals = _find_evals(run, phases)
    if not (any(ph.rows or ph.metrics for ph in phases) or evals):
        raise DataError(run, "no metrics found in this run folder", fix=f"expected {EXPECTED}")
    return Run(run, pipeline, schedule, phases, evals)


def _find_evals(run: Path, phases: list[Phase]) -> list[EvalResult]:
    owners = {ph.path.resolve(): ph for ph in phases if ph.path is not None and ph.path.resolve() != run.resolve()}
    out = []
    for f in set(run.glob("**/evals/*.json")) | set(run.glob("eval*.json")) | set(run.glob("final_eval.json")):
        data = _read_json(f)
        if not data or not isinstance(data.get("datasets"), dict):
            continue
        step = _STEP_FILE.match(f.name)
        owner = owners.get(f.parent.parent.resolve()) if f.parent.name == "evals" else None
        if step and owner is not None:  # a pipeline phase's dev eval
            s = int(step.group(1))
            label, order = f"phase {owner.index} step {s}", (0, owner.offset + s, owner.index)
        elif step and f.parent.name == "evals" and f.parent.parent == run:  # a GRPO run's dev eval
            label, order = f"step {step.group(1)}", (0, int(step.group(1)), 0)
        else:
            name = f.relative_to(run).with_suffix("").as_posix()
            label, order = name, (1, int(f.name == "final_eval.json"), name)
        out.append(EvalResult(label, f, data, order))
    return sorted(out, key=lambda e: e.order)


# --------------------------------------------------------------------------------------------------------- plotting
def _series(run: Run, key: str, only: Phase | None = None) -> tuple[list[int], list[float]]:
    pts = [(ph.offset + r["step"], v) for ph in ([only] if only else run.phases) for r in ph.rows
           if (v := _num(r.get(key))) is not None]
    return [x for x, _ in pts], [y for _, y in pts]


def _moving_average(ys: list[float], w: int) -> list[float]:
    return [sum(ys[max(0, i - w + 1):i + 1]) / min(i + 1, w) for i in range(len(ys))]


def _figure(run: Run, title: str, ylabel: str, xlabel: str | None = None):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.set(title=title, ylabel=ylabel, xlabel=xlabel or ("global step" if run.pipeline else "step"))
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig, ax, path: Path, run: Run | None = None) -> Path:
    """Draw the phase boundaries of ``run`` (pipeline runs, step-axis plots), the legend, and write the PNG."""
    labelled: set[str] = set()
    phases = run.phases if run is not None and run.pipeline else []
    for prev, ph in zip([None, *phases], phases):  # the first phase too: a schedule may open with OFSD
        if ph.kind == "ofsd" and ph.status != "not started":
            ax.axvline(ph.offset, color="tab:red", ls="--", lw=1.2, label=None if labelled & {"o"} else "OFSD phase")
            labelled.add("o")
        elif ph.kind == "grpo" and prev is not None and prev.kind == "grpo" and ph.rows:
            ax.axvline(ph.offset, color="gray", ls=":", lw=1, label=None if labelled & {"g"} else "new GRPO phase")
            labelled.add("g")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _plot_lines(run: Run, path: Path, ylabel: str, keys: list[tuple[str, str, dict]]) -> Path | None:
    data = [(label, *_series(run, key), style) for key, label, style in keys]
    if not any(d[1] for d in data):
        return None
    fig, ax = _figure(run, PLOTS[path.name][0], ylabel)
    for label, xs, ys, style in data:
        if xs:
            style = dict(style)
            shift = style.pop("shift", 0.0)  # e.g. a weight's deviation from 1 on a gap's axis
            ax.plot(xs, [y + shift for y in ys], label=label, **style)
    return _save(fig, ax, path, run)


def _plot_reward(run: Run, path: Path) -> Path | None:
    xs, ys = _series(run, "reward/em")
    if not xs:
        return None
    fig, ax = _figure(run, "Training reward (rollout EM)", "reward")
    ax.plot(xs, ys, color="tab:blue", alpha=0.35, lw=1, label="reward/em")
    w = max(2, min(25, len(ys) // 5))
    for key, style in (("reward/em", {"color": "tab:blue", "lw": 2}),
                       ("reward/f1", {"color": "tab:orange", "lw": 1.2, "ls": "--"})):
        label: str | None = f"{key} moving average (w={w})"
        for ph in run.phases:  # averaged within each phase: every phase starts from another policy
            px, py = _series(run, key, ph)
            if len(py) >= 2:
                ax.plot(px, _moving_average(py, w), label=label, **style)
                label = None
    if cx := _series(run, "health/collapse")[0]:
        ax.plot(cx, [dict(zip(xs, ys)).get(x, 0.0) for x in cx], "rx", ms=8, label="collapse detected")
    return _save(fig, ax, path, run)


def _plot_dev_em(run: Run, path: Path) -> Path | None:
    names = sorted({k[4:-3] for ph in run.phases for r in ph.rows for k in r
                    if k.startswith("dev/") and k.endswith("/em") and k.count("/") == 2})
    keys = [("dev/em", "average", {"color": "black", "lw": 2, "marker": "o"})]
    return _plot_lines(run, path, "EM", keys + [(f"dev/{n}/em", n, {"marker": ".", "lw": 1}) for n in names])


def _plot_ofsd_kl(run: Run, path: Path) -> Path | None:
    ofsd = [ph for ph in run.phases if ph.kind == "ofsd" and ph.metrics]
    # a per-step KL history (a list-valued *kl* key), when a phase records one
    seqs = {ph.index: next((v for k, v in ph.metrics.items() if "kl" in k and isinstance(v, list)), []) for ph in ofsd}
    hist = {i: ys for i, seq in seqs.items() if (ys := [y for y in map(_num, seq) if y is not None])}
    if hist:
        fig, ax = _figure(run, "OFSD KL per step", "KL", "OFSD step")
        for i, ys in hist.items():
            ax.plot(range(1, len(ys) + 1), ys, marker=".", label=f"phase {i}")
        return _save(fig, ax, path)
    pts = [(ph.index, _num(ph.metrics.get("ofsd/kl_first")), _num(ph.metrics.get("ofsd/kl_last"))) for ph in ofsd]
    pts = [p for p in pts if p[1] is not None or p[2] is not None]
    if not pts:
        return None
    fig, ax = _figure(run, "OFSD KL: first vs last epoch, per phase", "KL (token mean)", "OFSD phase")
    xs = list(range(len(pts)))
    ax.bar([x - 0.2 for x in xs], [p[1] or 0.0 for p in pts], 0.4, label="first epoch", color="tab:purple")
    ax.bar([x + 0.2 for x in xs], [p[2] or 0.0 for p in pts], 0.4, label="last epoch", color="tab:green")
    ax.set_xticks(xs, [f"phase {p[0]}" for p in pts])
    ax.set_xlim(-0.8, len(pts) - 0.2)
    return _save(fig, ax, path)


def _pick_evals(evals: list[EvalResult], k: int = MAX_EVAL_GROUPS) -> list[EvalResult]:
    n = len(evals)
    return evals if n <= k else [evals[i] for i in sorted({round(j * (n - 1) / (k - 1)) for j in range(k)})]


def _plot_eval_em(run: Run, path: Path) -> Path | None:
    evals = _pick_evals(run.evals)
    groups = list(dict.fromkeys(n for e in evals for n in e.data["datasets"])) + ["average"]
    if len(groups) == 1:
        return None
    fig, ax = _figure(run, PLOTS[path.name][0], "EM", "dataset")
    width = 0.8 / len(evals)
    for j, e in enumerate(evals):
        cells = [e.data.get("average") if g == "average" else e.data["datasets"].get(g) for g in groups]
        vals = [_num(c.get("em")) if isinstance(c, dict) else None for c in cells]
        ax.bar([i - 0.4 + width * (j + 0.5) for i in range(len(groups))],
               [math.nan if v is None else v for v in vals], width, label=e.label)
    ax.set_xticks(list(range(len(groups))), groups, rotation=20 if len(groups) > 5 else 0)
    ax.grid(False, axis="x")
    return _save(fig, ax, path)


# --------------------------------------------------------------------------------------------------------- markdown
def _fmt(v, nd: int = 3) -> str:
    v = _num(v)
    return "–" if v is None else f"{v:.{nd}f}"


def _first_last(rows: list[dict], key: str) -> list[str]:
    vals = [v for v in (_num(r.get(key)) for r in rows) if v is not None]
    return [_fmt(vals[0]), _fmt(vals[-1])] if vals else ["–", "–"]


def _summary_table(run: Run) -> list[str]:
    lines = ["| phase | kind | status | steps | seconds | first reward | last reward | first dev EM | last dev EM "
             "| notes |", "|---:|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for ph in run.phases:
        secs = "–" if ph.seconds is None else ("~" if ph.seconds_estimated else "") + f"{ph.seconds:.0f}"
        steps = "–" if ph.steps is None else str(ph.steps)
        m, notes = ph.metrics, []
        if ph.kind == "grpo":
            cells = _first_last(ph.rows, "reward/em") + _first_last(ph.rows, "dev/em")
            if collapses := sum(1 for r in ph.rows if _num(r.get("health/collapse"))):
                notes.append(f"{collapses} collapse(s) detected")
            if ph.planned_steps is not None and ph.steps is not None:
                steps = f"{ph.steps}/{ph.planned_steps}"
        else:
            cells = ["–"] * 4
            asked = f" from {_fmt(m['ofsd/questions'], 0)} questions" if "ofsd/questions" in m else ""
            notes = [f"pairs {_fmt(m.get('ofsd/pairs'), 0)}{asked}", f"sampling EM {_fmt(m.get('ofsd/reward_em'))}",
                     f"KL {_fmt(m.get('ofsd/kl_first'), 4)} → {_fmt(m.get('ofsd/kl_last'), 4)}"] if m else []
        lines.append(f"| {ph.index} | {ph.kind} | {ph.status} | {steps} | {secs} | " + " | ".join(cells)
                     + f" | {', '.join(notes)} |")
    if len(run.phases) > 1:
        rows = [r for ph in run.phases for r in ph.rows]
        secs = [ph.seconds for ph in run.phases if ph.seconds is not None]
        total = ("~" if any(ph.seconds_estimated for ph in run.phases) else "") + f"{sum(secs):.0f}" if secs else "–"
        steps = sum(ph.steps or 0 for ph in run.phases if ph.kind == "grpo")
        lines.append(f"| **all** | | | {steps} GRPO | {total} | "
                     + " | ".join(_first_last(rows, "reward/em") + _first_last(rows, "dev/em")) + " | |")
    return lines


def _eval_table(e: EvalResult, run: Path) -> list[str]:
    lines = [f"**{e.label}** (`{e.path.relative_to(run).as_posix()}`, mode {e.data.get('mode', '?')})", "",
             "| dataset | n | EM | F1 | searches | valid format |", "|---|---:|---:|---:|---:|---:|"]
    avg = e.data.get("average")
    rows = list(e.data["datasets"].items()) + ([("**average**", avg)] if isinstance(avg, dict) and avg else [])
    for name, d in rows:
        d = d if isinstance(d, dict) else {}
        lines.append(f"| {name} | {d.get('n', '')} | {_fmt(d.get('em'))} | {_fmt(d.get('f1'))} | "
                     f"{_fmt(d.get('searches'), 2)} | {_fmt(d.get('valid_format'))} |")
    return lines + [""]


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``report.md`` and its PNG plots into ``out_dir`` (default ``RUN_DIR/report``); returns report.md's path.

    Raises :class:`searche1.errors.DataError` when ``run_dir`` holds no metrics (see the module docstring).
    """
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.path / "report"
    if out.exists() and not out.is_dir():
        raise DataError(out, "is a file; the report is a folder (report.md and PNG plots)",
                        fix=f"give --out a folder, e.g. {out.with_suffix('')}-report, or leave it out for "
                            f"{run.path / 'report'}")
    out.mkdir(parents=True, exist_ok=True)
    for name in PLOTS:  # a plot skipped now must not survive from an earlier report
        (out / name).unlink(missing_ok=True)
    made = [p for p in (
        _plot_reward(run, out / "reward.png"), _plot_dev_em(run, out / "dev_em.png"),
        _plot_lines(run, out / "valid_format.png", "fraction", [
            ("rollout/valid_format", "training rollouts", {"lw": 1.2}),
            ("dev/valid_format", "dev (greedy)", {"marker": "o", "lw": 1.5})]),
        _plot_lines(run, out / "searches.png", "searches", [
            ("rollout/searches", "training rollouts", {"lw": 1.2}),
            ("dev/searches", "dev (greedy)", {"marker": "o", "lw": 1.5})]),
        _plot_ofsd_kl(run, out / "ofsd_kl.png"), _plot_eval_em(run, out / "eval_em.png"),
        _plot_lines(run, out / "sampler_gap.png", "nats per token", [
            ("rollout/logprob_mismatch", "|log π_sampler − log π_trainer|", {"lw": 1.2}),
            ("loss/is_weight_mean", "TIS weight − 1", {"lw": 1.2, "ls": "--", "shift": -1.0})]),
    ) if p is not None]
    md = [f"# Run report: `{run.path}`", ""]
    sched = " → ".join(run.schedule) if run.schedule else "unknown (no pipeline.json)"
    md += [f"Pipeline run; schedule: {sched}. The plots put the GRPO phases end to end on one global step axis; dashed "
           "red lines mark where OFSD phases sit." if run.pipeline else "GRPO run.", ""]
    md += ["## Summary", ""] + _summary_table(run) + [""]
    if run.evals:
        latest, first = run.evals[-1], run.evals[0]
        md += ["## Evaluation", "", "Latest:", ""] + _eval_table(latest, run.path)
        if first is not latest:
            md += ["First:", ""] + _eval_table(first, run.path)
        if len(_pick_evals(run.evals)) < len(run.evals):
            md += [f"The EM chart shows {MAX_EVAL_GROUPS} of the {len(run.evals)} evaluations, evenly spaced.", ""]
    if made:
        md += ["## Plots", ""]
        for p in made:
            title, caption = PLOTS[p.name]
            md += [f"### {title}", "", caption, "", f"![{title}]({p.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(md), encoding="utf-8")
    return report
