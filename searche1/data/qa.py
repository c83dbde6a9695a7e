"""QA set loading and writing: FlashRAG jsonl, Search-R1 / veRL jsonl or parquet, and local HF ``datasets`` folders.

Each row is read the same way whatever the container:

- question: a string ``question`` column, else ``extra_info.question``, else the text after the last ``Question:`` in
  the user message of ``prompt`` (Search-R1's instruction template ends with ``Question: <q>\\n``);
- answers: ``reward_model.ground_truth`` (a ``{"target": [...]}`` dict, a string or a list) when present, else
  ``golden_answers`` / ``answers`` / ``answer``; a single string is wrapped in a list;
- id: ``id``, else ``extra_info.index``, else ``<dataset>-<line>``;
- dataset: the ``dataset`` argument, else ``data_source``, else the file stem (``dev/nq.jsonl`` -> ``nq``);
- metadata: ``metadata`` merged with ``extra_info``.

Malformed rows raise :class:`~searche1.errors.DataError` naming the file, the 1-based line (row for parquet and HF
folders), the field and the fix. Writing is FlashRAG jsonl, atomic.

A ``DatasetDict`` folder with several splits needs the split named, either as ``split=`` or as a ``FOLDER:SPLIT``
suffix on the path (``data/nq_search:train``), so a training config can never silently read the test split; a
folder with one split (or a plain ``Dataset`` folder) needs none.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from searche1.data.corpus import iter_jsonl, record_id, write_jsonl_atomic
from searche1.data.types import QAExample
from searche1.errors import DataError

ACCEPTED = (
    "FlashRAG jsonl ({\"id\", \"question\", \"golden_answers\", \"metadata\"}), Search-R1/veRL jsonl or parquet "
    "(\"prompt\", \"reward_model.ground_truth\", \"extra_info\", \"data_source\"), or a local Hugging Face datasets "
    "folder (Dataset/DatasetDict.save_to_disk) with either set of columns"
)
#: how to turn a CSV/TSV or a JSON array into JSON lines (a string answer is read as a one-answer list)
_CONVERT = {
    ".csv": "convert it to JSON lines with columns question and answer, e.g. python -c \"import pandas as pd; "
            "pd.read_csv('{src}').to_json('{dst}', orient='records', lines=True)\"; ",
    ".tsv": "convert it to JSON lines with columns question and answer, e.g. python -c \"import pandas as pd; "
            "pd.read_csv('{src}', sep='\\t').to_json('{dst}', orient='records', lines=True)\"; ",
    ".json": "a JSON array converts to JSON lines with jq -c '.[]' {src} > {dst}; ",
}
ANSWER_KEYS = ("golden_answers", "answers", "answer")
KNOWN_KEYS = {"question", "prompt", "reward_model", "extra_info", *ANSWER_KEYS}

log = logging.getLogger(__name__)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".parquet"):
        name = name.removesuffix(suffix)
    return name


def _as_list(value: Any) -> list | None:
    """Lists, tuples and array-likes (numpy arrays from pandas) as a plain list; ``None`` for anything else."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        out = value.tolist()
        return out if isinstance(out, list) else None
    return None


def _answers(row: dict, path: Path, line: int) -> list[str]:
    if isinstance(row.get("reward_model"), dict) and "ground_truth" in row["reward_model"]:
        field, value = "reward_model.ground_truth", row["reward_model"]["ground_truth"]
        if isinstance(value, dict):
            field, value = field + ".target", value.get("target")
    else:
        field, value = next(((k, row[k]) for k in ANSWER_KEYS if k in row), ("golden_answers", None))
    fix = f"give '{field}' a non-empty list of answer strings"
    if value is None:
        raise DataError(path, "missing answers", line=line, field=field, fix=fix)
    answers = [value] if isinstance(value, str) else _as_list(value)
    if answers is None:
        raise DataError(path, f"answers must be a string or a list of strings, got {type(value).__name__}",
                        line=line, field=field, fix=fix)
    bad = [a for a in answers if not isinstance(a, str)]
    if bad:
        raise DataError(path, f"answers must be strings, got {type(bad[0]).__name__} {bad[0]!r}", line=line,
                        field=field, fix=f"quote every answer, e.g. [\"{bad[0]}\"]")
    answers = [a for a in answers if a.strip()]
    if not answers:
        raise DataError(path, "no answers (empty list or empty strings)", line=line, field=field, fix=fix)
    return answers


def _question_from_prompt(prompt: Any) -> str | None:
    if isinstance(prompt, str):
        text = prompt
    else:
        messages = _as_list(prompt) or []
        users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role", "user") == "user"]
        text = next((c for c in reversed(users) if isinstance(c, str)), None)
        if text is None:
            return None
    head, sep, tail = text.rpartition("Question:")
    return tail.strip() if sep else text.strip()


def _question(row: dict, extra: dict, path: Path, line: int) -> str:
    for field, value in (("question", row.get("question")), ("extra_info.question", extra.get("question"))):
        if value is not None:
            if not isinstance(value, str):
                raise DataError(path, f"must be a string, got {type(value).__name__}", line=line, field=field,
                                fix="store the question as a string")
            if value.strip():
                return value.strip()
    question = _question_from_prompt(row["prompt"]) if "prompt" in row else None
    if not question:
        field = "prompt" if "prompt" in row else "question"
        raise DataError(path, "missing or empty question", line=line, field=field,
                        fix="add a non-empty \"question\" (or a Search-R1 prompt ending with 'Question: <q>')")
    return question


def parse_row(row: Any, path: Path, line: int, dataset: str | None, default_dataset: str) -> QAExample:
    """One QA record (FlashRAG or Search-R1 shaped) -> :class:`QAExample`; see the module docstring."""
    if not isinstance(row, dict):
        raise DataError(path, f"expected an object, got {type(row).__name__}", line=line, fix=f"use {ACCEPTED}")
    if not KNOWN_KEYS & row.keys():
        raise DataError(path, f"unrecognised QA format (keys: {sorted(row)})", line=line,
                        fix=f"accepted formats: {ACCEPTED}")
    extra = row.get("extra_info")
    extra = extra if isinstance(extra, dict) else {}
    meta = row.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise DataError(path, f"must be an object, got {type(meta).__name__}", line=line, field="metadata",
                        fix="store metadata as a JSON object or drop it")
    question = _question(row, extra, path, line)
    answers = _answers(row, path, line)
    source = row.get("data_source")
    name = dataset or (source if isinstance(source, str) and source else default_dataset)
    qid = record_id(row, path, line, ("id",))
    if qid is None and extra.get("index") is not None:
        qid = record_id(extra, path, line, ("index",))
    return QAExample(id=qid or f"{name}-{line}", question=question, answers=answers, dataset=name,
                     metadata={**(meta or {}), **extra})


def _rows_hf(path: Path, split: str | None) -> Iterator[tuple[int, dict]]:
    try:
        import datasets
    except ImportError as e:
        raise DataError(path, "reading a Hugging Face datasets folder needs the 'datasets' package",
                        fix="pip install 'searche1[hf]'") from e
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds.keys())
        if split is None and len(names) == 1:
            split = names[0]
        if split is None:
            raise DataError(path, f"holds several splits {names} and none was named", field="split",
                            fix=f"name the split: '{path}:{'train' if 'train' in names else names[0]}' "
                                f"(or split=), one of {names}")
        if split not in ds:
            raise DataError(path, f"split {split!r} not found; available: {names}", field="split",
                            fix=f"name one of {names}, e.g. '{path}:{names[0]}'")
        log.info("%s: reading split %r (%d rows; splits: %s)", path, split, len(ds[split]), names)
        ds = ds[split]
    elif split is not None:
        log.info("%s: a single Dataset (no splits); split %r ignored", path, split)
    for i, row in enumerate(ds, start=1):
        yield i, row


def split_path(path: str | Path) -> tuple[Path, str | None]:
    """``"FOLDER:SPLIT"`` -> ``(FOLDER, SPLIT)`` when FOLDER is a Hugging Face datasets folder and the whole string is
    not an existing path; anything else -> ``(path, None)``."""
    text = str(path)
    if ":" in text and not Path(text).exists():
        head, _, tail = text.rpartition(":")
        if tail and "/" not in tail and is_hf_dataset_dir(head):
            return Path(head), tail
    return Path(path), None


def _rows_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for broken files
        raise DataError(path, f"cannot read parquet: {e}", fix="check the file is a valid parquet table") from e
    yield from enumerate(table.to_pylist(), start=1)


def is_hf_dataset_dir(path: str | Path) -> bool:
    """True for a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    path = Path(path)
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def iter_qa(path: str | Path, dataset: str | None = None, split: str | None = None) -> Iterator[QAExample]:
    """Stream the examples of one QA file or HF datasets folder (format detected from the path).

    ``path`` may be ``FOLDER:SPLIT`` for a ``DatasetDict`` folder; ``split=`` takes precedence over the suffix."""
    path, suffix_split = split_path(path)
    split = split if split is not None else suffix_split
    if is_hf_dataset_dir(path):
        rows = _rows_hf(path, split)
    elif path.is_dir():
        raise DataError(path, "is a folder but not a Hugging Face datasets folder",
                        fix="pass a file, or use load_qa_files() to load every *.jsonl in a folder")
    elif path.name.endswith((".jsonl", ".jsonl.gz")):
        rows = iter_jsonl(path)
    elif path.suffix == ".parquet":
        if not path.is_file():
            raise DataError(path, "file not found", fix="check the path")
        rows = _rows_parquet(path)
    elif not path.exists():
        raise DataError(path, "file not found", fix="check the path")
    else:
        raise DataError(path, "unrecognised QA file type", fix=_CONVERT.get(path.suffix.lower(), "").format(
                            src=path, dst=path.with_suffix(".jsonl")) + f"accepted formats: {ACCEPTED}")
    default = _stem(path)
    n = 0
    for n, (line, row) in enumerate(rows, start=1):
        yield parse_row(row, path, line, dataset, default)
    if n == 0:
        raise DataError(path, "holds no questions (an empty file or split)",
                        fix="check the path, or that the file was written completely")


def load_qa(
    path: str | Path, dataset: str | None = None, limit: int | None = None, split: str | None = None
) -> list[QAExample]:
    """Load a QA set (FlashRAG jsonl, Search-R1 jsonl/parquet or HF datasets folder); at most ``limit`` examples."""
    out: list[QAExample] = []
    if limit is not None and limit <= 0:
        return out
    for ex in iter_qa(path, dataset=dataset, split=split):
        out.append(ex)
        if limit is not None and len(out) >= limit:
            break
    return out


def load_qa_files(paths: Iterable[str | Path]) -> dict[str, list[QAExample]]:
    """Load several QA sources, grouped by dataset name; a plain folder contributes every ``*.jsonl`` in it."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and not is_hf_dataset_dir(p):
            if (p / "corpus.jsonl").is_file() and any((p / s).is_dir() for s in ("train", "dev")):
                raise DataError(p, "is a data folder (corpus.jsonl, train/, dev/), not a folder of QA files",
                                fix=f"pass {p / 'train'} for training questions or {p / 'dev'} for evaluation")
            found = sorted(p.glob("*.jsonl"))
            if not found:
                raise DataError(p, "folder holds no *.jsonl files", fix="pass QA files or a folder of *.jsonl")
            files.extend(found)
        else:
            files.append(p)
    out: dict[str, list[QAExample]] = {}
    seen: dict[tuple[str, str], Path] = {}  # (dataset, id) -> the file it came from
    given: set[tuple[Path, str | None]] = set()
    for f in files:
        path, split = split_path(f)
        if (path.resolve(), split) in given:
            raise DataError(f, "given twice (its questions would count twice)",
                            fix="pass each file once (a folder already includes every *.jsonl in it)")
        given.add((path.resolve(), split))
        for ex in iter_qa(f):
            other = seen.setdefault((ex.dataset, ex.id), f)
            if other != f:
                raise DataError(f, f"question id {ex.id!r} of dataset {ex.dataset!r} is also in {other} (files with "
                                   "the same name form one dataset)",
                                fix="pass each file once, or rename one of the files so each is its own dataset")
            out.setdefault(ex.dataset, []).append(ex)
    return out


def write_qa(examples: Iterable[QAExample], path: str | Path) -> int:
    """Write examples as FlashRAG jsonl atomically; return the number written."""
    return write_jsonl_atomic((ex.to_json() for ex in examples), path)
