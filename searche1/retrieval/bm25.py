"""BM25 retrieval with `bm25s` (sparse scores precomputed at index time) and PyStemmer's English stemmer.

The default CPU retriever. Queries are tokenised with the index's vocabulary, the way bm25s tokenises (lowercase,
``\\w\\w+`` words, stopwords dropped, PyStemmer stems) but read-only: bm25s's ``tokenize(update_vocab=False)`` still
records every never-seen word in its tables, which grows without bound in a long-lived server. Words the corpus
never saw are dropped, and a query left with no known words returns the first ``topk`` passages with score 0 rather
than failing, so one odd query from a policy never breaks a batch. (bm25s indexes a text without words, e.g. an
empty passage, as an ``""`` token; queries never use it, so such a passage never matches.)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from searche1.data.types import Passage
from searche1.errors import DataError
from searche1.retrieval.base import Hit


def import_bm25s():
    """Import ``bm25s`` without letting it take the GPU. When jax is installed, ``import bm25s`` runs a jax op, and
    jax then reserves 75% of GPU memory for itself: on an H100 the GRPO step ran out of memory (measured, issue 7).
    We never use bm25s's jax top-k (:meth:`BM25Retriever.search` selects with numpy), so unless jax is already
    imported or ``JAX_PLATFORMS`` is set, jax is kept on the CPU."""
    if "jax" not in sys.modules:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import bm25s

    return bm25s


def _stemmer(language: str | None):
    if not language:
        return None
    import Stemmer  # PyStemmer

    return Stemmer.Stemmer(language)


class BM25Retriever:
    """In-process BM25 over a list of passages (``search`` is batched and thread-safe for reads)."""

    def __init__(self, model, tokenizer, passages: list[Passage], params: dict) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self.passages = passages
        self.params = params
        self._stopwords = frozenset(tokenizer.stopwords or ())

    def _query_ids(self, text: str) -> list[int]:
        """The index token ids of ``text``'s known words (bm25s's tokenisation, without touching its tables)."""
        tok = self._tokenizer
        word_to_id, word_to_stem, stem_to_sid = tok.word_to_id, tok.word_to_stem, tok.stem_to_sid
        stem, stopwords = tok.stemmer, self._stopwords
        ids = []
        for word in tok.splitter(text.lower() if tok.lower else text):
            wid = word_to_id.get(word)
            if wid is None:
                if word in stopwords or stem is None:
                    continue
                s = word_to_stem.get(word)
                wid = stem_to_sid.get(stem(word) if s is None else s)
                if wid is None:
                    continue
            ids.append(wid)
        return ids

    # ---- building -------------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        passages: list[Passage],
        *,
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        stemmer: str | None = "english",
        stopwords: str = "en",
        show_progress: bool = True,
    ) -> "BM25Retriever":
        bm25s = import_bm25s()
        from bm25s.tokenization import Tokenizer

        if not passages:
            raise ValueError("cannot build a BM25 index over an empty corpus")
        tok = Tokenizer(stemmer=_stemmer(stemmer), stopwords=stopwords)
        ids = tok.tokenize(
            [p.contents for p in passages], update_vocab=True, return_as="ids", show_progress=show_progress
        )
        model = bm25s.BM25(k1=k1, b=b, method=method)
        model.index(ids, show_progress=show_progress)
        params = {"k1": k1, "b": b, "method": method, "stemmer": stemmer, "stopwords": stopwords}
        return cls(model, tok, passages, params)

    # ---- persistence ------------------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write the bm25s arrays and the tokenizer vocabulary into ``folder`` (passages are saved by the caller)."""
        folder.mkdir(parents=True, exist_ok=True)
        self._model.save(str(folder / "bm25"), show_progress=False)
        self._tokenizer.save_vocab(str(folder / "bm25"))
        self._tokenizer.save_stopwords(str(folder / "bm25"))
        (folder / "bm25" / "searche1_params.json").write_text(json.dumps(self.params))

    @classmethod
    def load(cls, folder: Path, passages: list[Passage], mmap: bool = False) -> "BM25Retriever":
        bm25s = import_bm25s()
        from bm25s.tokenization import Tokenizer

        sub = folder / "bm25"
        params_file = sub / "searche1_params.json"
        if not params_file.is_file():
            raise DataError(folder, "not a BM25 index (bm25/searche1_params.json missing)",
                            fix="build one with `searche1 index --corpus FILE --out DIR`")
        params = json.loads(params_file.read_text())
        model = bm25s.BM25.load(str(sub), mmap=mmap, show_progress=False)
        tok = Tokenizer(stemmer=_stemmer(params.get("stemmer")), stopwords=params.get("stopwords", "en"))
        tok.load_vocab(str(sub))
        tok.load_stopwords(str(sub))
        n = model.scores["num_docs"]
        if n != len(passages):
            raise DataError(folder, f"index has {n} documents but corpus.jsonl has {len(passages)}",
                            fix="rebuild the index with `searche1 index`")
        return cls(model, tok, passages, params)

    # ---- search -----------------------------------------------------------------------------------------------
    def search(self, queries: list[str], topk: int = 3) -> list[list[Hit]]:
        if not queries:
            return []
        k = max(1, min(int(topk), len(self.passages)))
        model = self._model
        known = model.unique_token_ids_set
        out: list[list[Hit]] = []
        ids = [self._query_ids(query) for query in queries]  # all first: faster than interleaved with scoring
        for q in ids:
            q = [t for t in q if t in known]
            scores = model.get_scores_from_ids(q) if q else np.zeros(len(self.passages), dtype=np.float32)  # (N,)
            # top-k as the k smallest of -scores: bm25s.retrieve's np.argpartition(scores, -k) is ~5x slower on
            # these score vectors, most of whose entries are tied zeros (measured in benchmarks/retrieval.py)
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
            out.append([Hit(id=self.passages[d].id, contents=self.passages[d].contents, score=float(scores[d]))
                        for d in top.tolist()])
        return out
