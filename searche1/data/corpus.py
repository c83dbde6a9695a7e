"""Corpus loading and writing: FlashRAG jsonl passages, plus the jsonl helpers the QA loader shares.

Accepted records, one JSON object per line (``.jsonl`` or ``.jsonl.gz``; blank lines are skipped):

- FlashRAG: ``{"id": ..., "contents": "\\"Title\\"\\ntext"}``;
- title/text: ``{"id": ..., "title": ..., "text": ...}`` (``title`` optional).

``doc_id`` and ``_id`` are accepted as aliases of ``id``; integer ids become strings. Anything else raises
:class:`~searche1.errors.DataError` naming the file, the 1-based line, the field and the fix. Writing is always
FlashRAG jsonl, atomic (temp file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from searche1.data.types import Passage
from searche1.errors import DataError

ID_KEYS = ("id", "doc_id", "_id")


def _open_bytes(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _read_error(path: Path, e: BaseException, line: int) -> DataError:
    """A read failure (truncated or corrupt gzip, I/O error) as a DataError naming the line being read."""
    gz = path.name.endswith(".gz")
    if isinstance(e, EOFError):
        return DataError(path, "the gzip stream ends early: the file is truncated (an interrupted download or copy?)",
                         line=line, fix="download or copy it again; `gzip -t FILE` checks a .gz file")
    if isinstance(e, gzip.BadGzipFile):
        return DataError(path, f"not a gzip file though its name ends in .gz ({e})", line=line,
                         fix="rename it without .gz if it is plain jsonl, or compress it with gzip")
    if isinstance(e, zlib.error):
        return DataError(path, f"corrupt gzip data ({e})", line=line,
                         fix="download or copy it again; `gzip -t FILE` checks a .gz file")
    return DataError(path, f"cannot read the file: {type(e).__name__}: {e}", line=line,
                     fix="check the file is readable and the disk healthy"
                         + ("; `gzip -t FILE` checks it" if gz else ""))


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a ``.jsonl`` / ``.jsonl.gz`` file (1-based).

    A truncated or corrupt gzip file, or a read error, raises :class:`DataError` naming the line being read."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(path.glob("*.jsonl*"))
        raise DataError(path, "is a folder, not a jsonl file",
                        fix="pass a file" + (f", e.g. {inside[0]}" if inside else ""))
    if not path.is_file():
        raise DataError(path, "file not found", fix="check the path")
    try:
        f = _open_bytes(path)
    except OSError as e:
        raise _read_error(path, e, 1) from e
    with f:
        lines = iter(f)
        n = 0
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                break
            except (EOFError, zlib.error, OSError) as e:
                raise _read_error(path, e, n + 1) from e
            n += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, f"not valid UTF-8 ({e.reason})", line=n, fix="re-encode the file as UTF-8") from e
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    path, f"invalid JSON: {e.msg} (column {e.colno})", line=n,
                    fix="each line must hold exactly one JSON object",
                ) from e
            if not isinstance(obj, dict):
                raise DataError(
                    path, f"expected a JSON object, got {type(obj).__name__}", line=n,
                    fix="each line must hold one JSON object, e.g. {\"id\": ..., ...}",
                )
            yield n, obj


def write_jsonl_atomic(records: Iterable[dict], path: str | Path) -> int:
    """Write dicts as jsonl (gzip if the name ends in ``.gz``) atomically; return the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "wb") as raw:
            f: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="wb") if path.name.endswith(".gz") else raw
            for rec in records:
                f.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
                count += 1
            if f is not raw:
                f.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def record_id(obj: dict, path: Path, line: int, keys: tuple[str, ...] = ID_KEYS) -> str | None:
    """The record's id as a string (first of ``keys`` present), ``None`` if absent; bad types raise DataError."""
    for key in keys:
        if key in obj and obj[key] is not None:
            value = obj[key]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise DataError(path, f"id must be a string or integer, got {type(value).__name__}", line=line,
                                field=key, fix="use a string id such as \"p000123\"")
            sid = str(value)
            if not sid.strip():
                raise DataError(path, "id is empty", line=line, field=key, fix="give every record a non-empty id")
            return sid
    return None


def _string_field(obj: dict, key: str, path: Path, line: int) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(path, f"must be a string, got {type(value).__name__}", line=line, field=key,
                        fix=f"store '{key}' as a JSON string")
    return value


def _passage(obj: dict, path: Path, line: int) -> Passage:
    pid = record_id(obj, path, line)
    if pid is None:
        raise DataError(path, "missing id", line=line, field="id", fix="add an \"id\" (or \"doc_id\" / \"_id\") key")
    if "contents" in obj:
        return Passage(id=pid, contents=_string_field(obj, "contents", path, line))
    if "text" in obj:
        title = _string_field(obj, "title", path, line) if obj.get("title") is not None else ""
        return Passage.from_title_text(pid, title, _string_field(obj, "text", path, line))
    raise DataError(path, "missing passage text", line=line, field="contents",
                    fix="add \"contents\" (FlashRAG: '\"Title\"\\ntext') or \"title\" and \"text\"")


def iter_corpus(path: str | Path) -> Iterator[Passage]:
    """Stream the passages of a corpus jsonl file, checking every record and that ids are unique."""
    path = Path(path)
    seen: dict[str, int] = {}
    for line, obj in iter_jsonl(path):
        passage = _passage(obj, path, line)
        first = seen.setdefault(passage.id, line)
        if first != line:
            raise DataError(path, f"duplicate id {passage.id!r} (first seen on line {first})", line=line, field="id",
                            fix="give every passage a unique id")
        yield passage


def load_corpus(path: str | Path) -> list[Passage]:
    """All passages of a corpus jsonl file, in file order."""
    return list(iter_corpus(path))


def write_corpus(passages: Iterable[Passage], path: str | Path) -> int:
    """Write passages as FlashRAG jsonl (``{"id", "contents"}``) atomically; return the number written."""
    return write_jsonl_atomic((p.to_json() for p in passages), path)
