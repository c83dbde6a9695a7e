"""Shared test helpers: the location of the shared ``searchqa`` mini-benchmark and a marker to skip without it."""

from __future__ import annotations

from pathlib import Path

import pytest

#: ``../shared/data/searchqa`` next to the repository (never copied into it; see its README).
SEARCHQA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "searchqa"

requires_searchqa = pytest.mark.skipif(not SEARCHQA.is_dir(), reason=f"shared data set absent: {SEARCHQA}")
