"""Shared test helpers: the location of the shared ``searchqa`` mini-benchmark and a marker to skip without it."""

from __future__ import annotations

from pathlib import Path

import pytest

#: ``../shared/data/searchqa`` next to the repository (never copied into it; see its README).
SEARCHQA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "searchqa"

requires_searchqa = pytest.mark.skipif(not SEARCHQA.is_dir(), reason=f"shared data set absent: {SEARCHQA}")


@pytest.fixture(autouse=True)
def _fp32_cpu(monkeypatch):
    """Every "auto" bf16 setting takes its fp32 path, on any CPU: the equivalence tests compare fp32 runs, and a CPU
    with native bf16 (AMX) would otherwise switch them to bf16. Set in the environment, so the ranks a test spawns
    inherit it; tests of the bf16 paths set their fields explicitly, or this variable."""
    monkeypatch.setenv("SEARCHE1_CPU_BF16", "0")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run much faster on one thread on a shared 2-core machine (thread contention dominates)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
