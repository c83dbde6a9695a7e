"""Small helpers shared by the benchmark scripts: timing with medians, machine info, result files, markdown tables.

The benchmark machines are small and shared, so scripts repeat each measurement and report the median, compare
ratios measured within one run, and record the machine (CPU count, load average, package versions) next to the
numbers.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]


# ---- the HF engine benchmarks' set-up ------------------------------------------------------------------------------
def add_engine_args(ap: Any) -> None:
    """The options of the HF engine benchmarks (shared_prefix.py, kv_cache.py, train_logits.py): model, searchqa data,
    repeats, threads."""
    ap.add_argument("--model", default="runs/warmup-smollm2")
    ap.add_argument("--data", type=Path, default=None, help="searchqa folder (default ../shared/data/searchqa)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)


def load_engine_model(args: Any) -> tuple[Any, Any]:
    """``(tokenizer, fp32 model in eval mode)`` of ``args.model``, with ``args.threads`` torch threads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from searche1.models import resolve_model_path

    torch.set_num_threads(args.threads)
    path = resolve_model_path(args.model)
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def searchqa_rollouts(args: Any) -> tuple[Any, list, list]:
    """``(BM25 retriever over the searchqa corpus (runs/searchqa-bm25, built once), train questions, the first 5 dev
    questions of each dataset)``; exits with a message when there is no searchqa data."""
    from searche1.data.qa import load_qa_files
    from searche1.paths import searchqa_dir
    from searche1.retrieval.index import ensure_index, load_retriever

    data = args.data or searchqa_dir()
    if data is None:
        sys.exit("no searchqa data (fix: pass --data DIR)")
    retriever = load_retriever(ensure_index(data / "corpus.jsonl", REPO_ROOT / "runs" / "searchqa-bm25"))
    train = [q for exs in load_qa_files(sorted((data / "train").glob("*.jsonl"))).values() for q in exs]
    dev = [q for exs in load_qa_files(sorted((data / "dev").glob("*.jsonl"))).values() for q in exs[:5]]
    return retriever, train, dev


# ---- timing -----------------------------------------------------------------------------------------------------
class Timer:
    """``with Timer() as t: ...`` then ``t.seconds`` (wall clock, ``time.perf_counter``)."""

    def __enter__(self) -> Timer:
        self._t0 = time.perf_counter()
        self.seconds = float("nan")
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0


def time_call(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn()`` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def repeat_median(fn: Callable[[], Any], repeats: int = 3, warmup: int = 0) -> tuple[float, list[float]]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; return (median seconds, all seconds)."""
    for _ in range(warmup):
        fn()
    times = [time_call(fn) for _ in range(max(1, repeats))]
    return statistics.median(times), times


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100, linear interpolation) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def rnd(x: float | None, digits: int = 3) -> float | None:
    """Round for JSON output; NaN/inf/None become ``None``."""
    if x is None or x != x or x in (float("inf"), float("-inf")):
        return None
    return round(float(x), digits)


# ---- machine info and result files --------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_info(packages: Sequence[str] = ()) -> dict[str, Any]:
    """CPU count and model, OS, Python, load average, git commit and the versions of ``packages`` (dist names)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "load_average_1_5_15m": load_average(),
        "git_commit": _git_commit(),
        "packages": {p: _version(p) for p in packages},
    }


def write_results(path: str | Path, results: dict[str, Any], packages: Sequence[str] = ()) -> Path:
    """Write ``results`` as indented JSON with ``timestamp`` and ``machine`` added first; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(packages),
        **results,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


# ---- tables -----------------------------------------------------------------------------------------------------
def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if v != v:
            return "–"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats get 2 decimals below 10, 1 below 100, none above; None is '–'."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    def line(vals: Sequence[str]) -> str:
        return "| " + " | ".join(str(v).ljust(w) for v, w in zip(vals, widths)) + " |"
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], note: str | None = None) -> str:
    """Print a titled markdown table (pasteable into the README) and return its text."""
    text = f"\n### {title}\n\n{markdown_table(headers, rows)}\n"
    if note:
        text += f"\n{note}\n"
    print(text, flush=True)
    return text


def host_profile(fn: Callable[[], Any], path: str | Path, rows: int = 45) -> Any:
    """Run ``fn`` under cProfile (host Python only: GPU work shows as time in the calls that wait for it) and write
    the top ``rows`` functions by own time and by cumulative time to ``path``; returns ``fn()``."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    result = prof.runcall(fn)
    buf = io.StringIO()
    for key in ("tottime", "cumulative"):
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(rows)
    Path(path).write_text(buf.getvalue())
    return result


def log(msg: str) -> None:
    """A progress line on stderr (keeps stdout to the tables)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
