"""Build, save and open retrieval indexes (BM25 or dense) as self-contained folders.

Layout of an index folder::

    searche1_index.json   kind, corpus source, document count, build parameters, build time
    corpus.jsonl          the passages (FlashRAG jsonl), so hits carry their text without the original file
    bm25/ or dense/       the retriever's own files

The folder is written atomically (temp folder + rename): an interrupted build never leaves a half index behind.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from searche1.data.types import Passage
from searche1.errors import DataError
from searche1.io import atomic_dir
from searche1.retrieval.base import Retriever

IndexKind = Literal["bm25", "dense"]
META_FILE = "searche1_index.json"


def build_index(
    corpus: str | Path | list[Passage],
    out: str | Path,
    *,
    kind: IndexKind = "bm25",
    overwrite: bool = False,
    show_progress: bool = True,
    **params,
) -> Path:
    """Index ``corpus`` (a corpus file or a list of passages) into the folder ``out``; returns ``out``.

    ``params`` go to :meth:`BM25Retriever.build` or :meth:`DenseRetriever.build` (e.g. ``k1``, ``model``).
    """
    from searche1.data.corpus import load_corpus

    out = Path(out)
    source = str(corpus) if not isinstance(corpus, list) else "<in-memory>"
    passages = load_corpus(corpus) if not isinstance(corpus, list) else corpus
    if not passages:
        raise DataError(source, "holds no passages: nothing to index",
                        fix="check the path, or that the corpus file was written completely")
    t0 = time.perf_counter()
    with atomic_dir(out, overwrite=overwrite, replaces=META_FILE) as tmp:
        if kind == "bm25":
            from searche1.retrieval.bm25 import BM25Retriever

            retriever = BM25Retriever.build(passages, show_progress=show_progress, **params)
        elif kind == "dense":
            from searche1.retrieval.dense import DenseRetriever

            retriever = DenseRetriever.build(passages, show_progress=show_progress, **params)
        else:
            raise ValueError(f"unknown index kind {kind!r}; valid kinds: bm25, dense")
        retriever.save(tmp)
        with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as f:
            for p in passages:
                f.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")
        meta = {
            "format": "searche1-index",
            "version": 1,
            "kind": kind,
            "num_docs": len(passages),
            "corpus": source,
            "params": retriever.params,
            "build_seconds": round(time.perf_counter() - t0, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def ensure_index(corpus: str | Path, index_dir: str | Path, kind: IndexKind = "bm25", **params) -> Path:
    """Build an index of ``corpus`` in ``index_dir`` unless one built from the same corpus file is already there."""
    index_dir = Path(index_dir)
    if index_dir.is_dir():
        try:
            meta = read_index_meta(index_dir)
            if meta.get("corpus") == str(corpus) and meta.get("kind") == kind:
                return index_dir
        except DataError:
            pass
    return build_index(corpus, index_dir, kind=kind, overwrite=True, **params)


def read_index_meta(index_dir: str | Path) -> dict:
    index_dir = Path(index_dir)
    meta_path = index_dir / META_FILE
    if not meta_path.is_file():
        raise DataError(index_dir, f"not a searche1 index ({META_FILE} missing)",
                        fix="build one with `searche1 index --corpus FILE --out DIR`")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(meta_path, f"invalid JSON: {e}", fix="rebuild the index") from None


def load_retriever(index_dir: str | Path, dense: dict | None = None, **kwargs) -> Retriever:
    """Open an index folder and return its in-process retriever (BM25 or dense, as recorded in its metadata).

    ``dense`` holds :meth:`DenseRetriever.load` options (``backend``, ``devices``, ``dtype``), ignored for BM25."""
    from searche1.data.corpus import load_corpus

    index_dir = Path(index_dir)
    meta = read_index_meta(index_dir)
    passages = load_corpus(index_dir / "corpus.jsonl")
    if meta["kind"] == "bm25":
        from searche1.retrieval.bm25 import BM25Retriever

        return BM25Retriever.load(index_dir, passages, **kwargs)
    if meta["kind"] == "dense":
        from searche1.retrieval.dense import DenseRetriever

        return DenseRetriever.load(index_dir, passages, **{**(dense or {}), **kwargs})
    raise DataError(index_dir / META_FILE, f"unknown index kind {meta['kind']!r}", field="kind",
                    fix="valid kinds: bm25, dense")
