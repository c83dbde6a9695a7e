"""Every benchmark script still starts: its module-level imports resolve and ``--help`` prints its docstring (the
scripts themselves take minutes and write benchmarks/results/, so they are run by hand, not here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if 'if __name__ == "__main__"' in p.read_text())  # not helpers


def test_there_are_benchmark_scripts():
    assert len(SCRIPTS) >= 10 and (BENCH / "common.py").is_file()


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_script_shows_its_help(script):
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    first = (script.read_text().split('"""')[1].strip().splitlines() or [""])[0]
    assert out.stdout.startswith("usage:") and first[:40] in " ".join(out.stdout.split()), first
