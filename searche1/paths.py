"""Where searche1 looks for shared data and keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path


def searchqa_dir() -> Path | None:
    """The searchqa miniature benchmark: ``$SEARCHE1_SEARCHQA``, else ``../shared/data/searchqa`` next to the
    current folder or next to this checkout. ``None`` when absent."""
    env = os.environ.get("SEARCHE1_SEARCHQA")
    candidates = [Path(env)] if env else []
    candidates += [
        Path.cwd().parent / "shared" / "data" / "searchqa",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "searchqa",
    ]
    for c in candidates:
        if (c / "corpus.jsonl").is_file():
            return c
    return None


def cache_dir() -> Path:
    """``$SEARCHE1_CACHE`` or ``~/.cache/searche1`` (converted models, demo indexes)."""
    d = Path(os.environ.get("SEARCHE1_CACHE", Path.home() / ".cache" / "searche1"))
    d.mkdir(parents=True, exist_ok=True)
    return d
