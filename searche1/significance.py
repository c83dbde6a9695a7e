"""Is a gain beyond noise? Paired comparison of two evaluations of the same questions.

Both evaluations score the same questions (``searche1 eval --out X.json`` writes ``X.samples.jsonl``; dev evaluations
during training write ``evals/step-N.samples.jsonl``), so the comparison is paired: per question, did A and B get it
right. Two statistics, both on per-question exact match:

* **exact McNemar test** over all questions: of the discordant questions (right in one evaluation only), ``wins``
  are right in B only and ``losses`` in A only; under "no difference" wins ~ Binomial(wins + losses, 1/2), and the
  two-sided p-value is ``min(1, 2 · P[X ≤ min(wins, losses)])``.
* **paired bootstrap** of the reported metric, the unweighted mean over datasets of per-dataset EM (the paper's
  "average"): questions are resampled with replacement within each dataset (stratified, so every dataset keeps its
  size), the same draw for A and B, and the 2.5/97.5 percentiles of Δ = avg(B) − avg(A) give a 95% interval.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from searche1.errors import DataError


@dataclass
class Paired:
    dataset: str
    id: str
    a: float  # exact match of evaluation A (0/1)
    b: float


def mcnemar_exact(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def macro_em(rows: Sequence[Paired], which: str) -> float:
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(r.dataset, []).append(getattr(r, which))
    return float(np.mean([np.mean(v) for v in by.values()]))


_CHUNK = 1 << 22  # resampled indices held at once (32 MB)


def paired_bootstrap(rows: Sequence[Paired], n_boot: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Stratified paired bootstrap of Δ macro EM (module docstring): ``delta``, ``ci_low``, ``ci_high``,
    ``p_le_zero`` (fraction of resamples with Δ ≤ 0)."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[Paired]] = {}
    for r in rows:
        groups.setdefault(r.dataset, []).append(r)
    diffs = np.zeros(n_boot)
    for members in groups.values():
        d = np.array([m.b - m.a for m in members])  # per-question difference
        rows_per_chunk = max(1, _CHUNK // len(d))  # a 14k-question test set x 10k resamples would take ~2 GB at once
        for s in range(0, n_boot, rows_per_chunk):  # consecutive draws: the same numbers as one big draw
            idx = rng.integers(0, len(d), size=(min(rows_per_chunk, n_boot - s), len(d)))
            diffs[s:s + len(idx)] += d[idx].mean(axis=1)
    diffs /= len(groups)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"delta": macro_em(rows, "b") - macro_em(rows, "a"), "ci_low": float(lo), "ci_high": float(hi),
            "p_le_zero": float(np.mean(diffs <= 0))}


def read_samples(path: str | Path) -> dict[tuple[str, str], float]:
    """Per-question EM from a samples file (``X.samples.jsonl``, or ``X.json`` with its samples file beside it)."""
    path = Path(path)
    if path.suffix == ".json" and not path.name.endswith(".samples.jsonl"):
        path = path.with_suffix(".samples.jsonl")
    if not path.is_file():
        raise DataError(path, "no per-question samples file",
                        fix="write one with `searche1 eval --out X.json` (it writes X.samples.jsonl beside it)")
    out: dict[tuple[str, str], float] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                s = json.loads(line)
                out[(str(s["dataset"]), str(s["id"]))] = float(s["em"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise DataError(path, f"not a samples record ({e})", line=n,
                                fix="samples lines need dataset, id and em") from None
    if not out:
        raise DataError(path, "holds no per-question record (an evaluation cut short, or an empty file)",
                        fix="rerun `searche1 eval --out X.json` to the end")
    return out


def pair_up(a: dict[tuple[str, str], float], b: dict[tuple[str, str], float]) -> tuple[list[Paired], int, int]:
    """The questions both evaluations scored (in A's order), and how many only A / only B scored."""
    both = [Paired(k[0], k[1], a[k], b[k]) for k in a if k in b]
    if not both:
        raise DataError("samples", "the two evaluations share no question (dataset, id)",
                        fix="compare evaluations of the same dev files")
    return both, len(a.keys() - b.keys()), len(b.keys() - a.keys())


def compare(a: dict[tuple[str, str], float], b: dict[tuple[str, str], float], n_boot: int = 10_000,
            seed: int = 0) -> dict:
    """Per-dataset and overall paired statistics of B against A (module docstring)."""
    rows, only_a, only_b = pair_up(a, b)
    per: dict[str, dict] = {}
    for name in dict.fromkeys(r.dataset for r in rows):
        rs = [r for r in rows if r.dataset == name]
        wins = sum(1 for r in rs if r.b > r.a)
        losses = sum(1 for r in rs if r.a > r.b)
        per[name] = {"n": len(rs), "em_a": float(np.mean([r.a for r in rs])), "em_b": float(np.mean([r.b for r in rs])),
                     "wins": wins, "losses": losses, "p_mcnemar": mcnemar_exact(wins, losses)}
    wins = sum(p["wins"] for p in per.values())
    losses = sum(p["losses"] for p in per.values())
    overall = {"n": len(rows), "em_a": macro_em(rows, "a"), "em_b": macro_em(rows, "b"), "wins": wins,
               "losses": losses, "p_mcnemar": mcnemar_exact(wins, losses),
               **paired_bootstrap(rows, n_boot=n_boot, seed=seed), "n_boot": n_boot}
    return {"datasets": per, "average": overall, "only_in_a": only_a, "only_in_b": only_b}


def markdown(result: dict, label_a: str = "A", label_b: str = "B") -> str:
    lines = [f"| dataset | n | EM {label_a} | EM {label_b} | Δ | wins | losses | McNemar p |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in result["datasets"].items():
        lines.append(f"| {name} | {r['n']} | {r['em_a']:.3f} | {r['em_b']:.3f} | {r['em_b'] - r['em_a']:+.3f} | "
                     f"{r['wins']} | {r['losses']} | {r['p_mcnemar']:.3g} |")
    o = result["average"]
    lines.append(f"| **average** | {o['n']} | {o['em_a']:.3f} | {o['em_b']:.3f} | {o['delta']:+.3f} "
                 f"(95% CI {o['ci_low']:+.3f} … {o['ci_high']:+.3f}) | {o['wins']} | {o['losses']} | "
                 f"{o['p_mcnemar']:.3g} |")
    return "\n".join(lines)
