"""Paired significance of an evaluation gain: exact McNemar, stratified paired bootstrap, samples files, CLI."""

import json
import math
import random

import pytest
from typer.testing import CliRunner

from searche1.cli import app
from searche1.errors import DataError
from searche1.significance import Paired, compare, mcnemar_exact, paired_bootstrap, read_samples


def test_mcnemar_hand_computed_and_naive():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)  # all 5 discordant go one way
    assert mcnemar_exact(9, 1) == pytest.approx(2 * 11 / 1024)
    assert mcnemar_exact(3, 3) == 1.0
    for w, l in [(7, 2), (2, 7), (12, 4), (20, 9)]:  # naive: sum the binomial pmf as floats
        n = w + l
        tail = sum(math.factorial(n) / (math.factorial(k) * math.factorial(n - k)) * 0.5 ** n
                   for k in range(min(w, l) + 1))
        assert mcnemar_exact(w, l) == pytest.approx(min(1.0, 2 * tail))
    assert mcnemar_exact(7, 2) == mcnemar_exact(2, 7)


def rows(n_per: dict[str, tuple[int, int, int, int]]) -> list[Paired]:
    """Per dataset: counts of (both right, B only, A only, both wrong)."""
    out = []
    for name, counts in n_per.items():
        for kind, c in zip(((1, 1), (0, 1), (1, 0), (0, 0)), counts):
            out += [Paired(name, f"{name}{len(out) + i}", float(kind[0]), float(kind[1])) for i in range(c)]
    return out


def test_bootstrap_is_degenerate_without_discordance_and_certain_when_all_flip():
    same = rows({"x": (5, 0, 0, 5), "y": (2, 0, 0, 8)})
    r = paired_bootstrap(same, n_boot=500)
    assert r["delta"] == r["ci_low"] == r["ci_high"] == 0.0 and r["p_le_zero"] == 1.0
    flip = rows({"x": (0, 10, 0, 0), "y": (0, 4, 0, 0)})
    r = paired_bootstrap(flip, n_boot=500)
    assert r["delta"] == r["ci_low"] == r["ci_high"] == 1.0 and r["p_le_zero"] == 0.0


def test_bootstrap_matches_a_naive_resampling_loop():
    data = rows({"x": (3, 6, 1, 10), "y": (1, 2, 2, 5)})
    r = paired_bootstrap(data, n_boot=4000, seed=1)
    # macro Δ: x (6-1)/20 = 0.25, y 0/10 = 0 → 0.125
    assert r["delta"] == pytest.approx(0.125)
    rng, deltas = random.Random(2), []
    by = {"x": [p for p in data if p.dataset == "x"], "y": [p for p in data if p.dataset == "y"]}
    for _ in range(4000):
        per = []
        for members in by.values():
            draw = [rng.choice(members) for _ in members]
            per.append(sum(p.b - p.a for p in draw) / len(draw))
        deltas.append(sum(per) / len(per))
    deltas.sort()
    assert r["ci_low"] == pytest.approx(deltas[100], abs=0.03) and r["ci_high"] == pytest.approx(deltas[3899], abs=0.03)
    assert r["p_le_zero"] == pytest.approx(sum(d <= 0 for d in deltas) / 4000, abs=0.02)


def write_samples(path, ems: dict[tuple[str, str], float]):
    with open(path, "w") as f:
        for (ds, i), em in ems.items():
            f.write(json.dumps({"dataset": ds, "id": i, "em": em, "pred": "x"}) + "\n")


def test_compare_pairs_by_dataset_and_id_and_the_cli(tmp_path):
    a = {("nq", str(i)): float(i < 2) for i in range(10)} | {("hotpotqa", str(i)): 0.0 for i in range(10)}
    b = {("nq", str(i)): float(i < 7) for i in range(10)} | {("hotpotqa", str(i)): float(i == 0) for i in range(11)}
    write_samples(tmp_path / "a.samples.jsonl", a)
    write_samples(tmp_path / "b.samples.jsonl", b)
    (tmp_path / "a.json").write_text("{}")
    assert read_samples(tmp_path / "a.json") == a  # the eval JSON finds its samples file
    res = compare(a, b, n_boot=1000)
    assert res["only_in_b"] == 1 and res["average"]["n"] == 20
    nq = res["datasets"]["nq"]
    assert (nq["wins"], nq["losses"], nq["em_a"], nq["em_b"]) == (5, 0, 0.2, 0.7)
    assert res["average"]["delta"] == pytest.approx((0.5 + 0.1) / 2) and res["average"]["wins"] == 6
    assert res["average"]["p_mcnemar"] == pytest.approx(2 / 64)
    r = CliRunner().invoke(app, ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.samples.jsonl"),
                                 "--boot", "500", "--out", str(tmp_path / "c.json")])
    assert r.exit_code == 0, r.output
    assert "| **average** | 20 | 0.100 | 0.400 | +0.300" in r.output and "1 only in b.samples.jsonl" in r.output
    assert json.loads((tmp_path / "c.json").read_text())["average"]["wins"] == 6


def test_bad_samples_files_are_named(tmp_path):
    with pytest.raises(DataError, match=r"no per-question samples file.*searche1 eval --out"):
        read_samples(tmp_path / "missing.json")
    (tmp_path / "bad.samples.jsonl").write_text('{"dataset": "nq", "id": "1", "em": 1}\n{"dataset": "nq"}\n')
    with pytest.raises(DataError, match=r"bad.samples.jsonl:2: not a samples record"):
        read_samples(tmp_path / "bad.samples.jsonl")
    (tmp_path / "empty.samples.jsonl").write_text("\n")  # an evaluation cut short: named, not "share no question"
    with pytest.raises(DataError, match=r"empty.samples.jsonl: holds no per-question record"):
        read_samples(tmp_path / "empty.json")
    with pytest.raises(DataError, match="share no question"):
        compare({("a", "1"): 1.0}, {("b", "1"): 1.0})
    r = CliRunner().invoke(app, ["compare", str(tmp_path / "x.json"), str(tmp_path / "y.json")])
    assert r.exit_code != 0 and "no per-question samples file" in r.output


def test_bootstrap_in_chunks_draws_the_same_resamples(monkeypatch):
    """Large test sets are resampled a chunk of rows at a time (bounded memory) with the same result."""
    import searche1.significance as sig

    rows = [sig.Paired(f"d{i % 3}", str(i), float(i % 2), float((i // 3) % 2 or i % 7 == 0)) for i in range(900)]
    whole = sig.paired_bootstrap(rows, n_boot=2000, seed=5)
    monkeypatch.setattr(sig, "_CHUNK", 1000)  # 3 resamples of a 300-question dataset per draw
    assert sig.paired_bootstrap(rows, n_boot=2000, seed=5) == whole
