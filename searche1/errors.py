"""Exception types shared across searche1.

Every user-facing error says *where* (file, line, field) and *how to fix it*, so a researcher never has to read a
traceback to find the bad record.
"""

from __future__ import annotations

from pathlib import Path


class SearchE1Error(Exception):
    """Base class of all errors searche1 raises on purpose."""


class DataError(SearchE1Error, ValueError):
    """A data file (QA set, corpus, index) is malformed.

    The message names the file, the 1-based line (or row) when there is one, the field, what was wrong and the fix.
    """

    def __init__(
        self,
        path: str | Path,
        problem: str,
        *,
        line: int | None = None,
        field: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        self.fix = fix
        where = self.path + (f":{line}" if line is not None else "")
        msg = f"{where}: " + (f"field '{field}': " if field else "") + problem
        if fix:
            msg += f" (fix: {fix})"
        super().__init__(msg)


class ConfigError(SearchE1Error, ValueError):
    """A configuration value is invalid; the message names the field path (e.g. ``rollout.topk``) and the fix."""


class RetrievalError(SearchE1Error, RuntimeError):
    """Retrieval failed (server down after all retries, bad response, broken index)."""
