"""Dense index search speed: faiss flat fp16 vs the sharded torch matmul index (fp32 and bf16) on random unit vectors.

    python benchmarks/dense_index.py [--n 200000] [--dim 384] [--queries 256] [--k 3] [--devices auto] [--quick]

Writes ``benchmarks/results/dense_index.json`` and prints a table: build seconds, index bytes, queries/s (median of
3 repeats over one batch of ``--queries``), and the top-k overlap with exact fp64 scores on a query sample. On a GPU
machine ``--devices auto`` shards over every visible GPU; on CPU one shard (``cpu``) is used, and bf16 there is
emulated on CPUs without native bf16, so CPU bf16 numbers say nothing about GPUs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, Timer, print_table, repeat_median, rnd, write_results  # noqa: E402

from searche1.retrieval.matmul_index import ShardedMatmulIndex, resolve_devices  # noqa: E402


def unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def overlap(ids: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids.tolist(), ref.tolist())]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--devices", default="auto")
    ap.add_argument("--quick", action="store_true", help="20k vectors, 64 queries")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "dense_index.json")
    a = ap.parse_args()
    if a.quick:
        a.n, a.queries = 20_000, 64
    vecs, q = unit(a.n, a.dim, 0), unit(a.queries, a.dim, 1)
    sample = q[:32]
    ref = np.argsort(-(sample.astype(np.float64) @ vecs.astype(np.float64).T), axis=1)[:, :a.k]
    devices = resolve_devices(a.devices)
    rows, results = [], {"n": a.n, "dim": a.dim, "queries": a.queries, "k": a.k, "devices": devices,
                         "backends": {}}

    def record(name: str, build_s: float, nbytes: int, search, ids_of) -> None:
        med, times = repeat_median(lambda: search(q), repeats=3, warmup=1)
        ov = overlap(ids_of(search(sample)), ref)
        results["backends"][name] = {"build_s": rnd(build_s), "bytes": nbytes, "search_s": rnd(med, 4),
                                     "search_s_all": [rnd(t, 4) for t in times], "queries_per_s": rnd(a.queries / med, 1),
                                     "topk_overlap_vs_fp64": rnd(ov, 4)}
        rows.append([name, rnd(build_s), f"{nbytes / 2**20:.1f}", rnd(a.queries / med, 1), rnd(ov, 4)])

    try:
        import faiss

        with Timer() as t:
            fx = faiss.IndexScalarQuantizer(a.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
            fx.add(vecs)
        record("faiss flat fp16 (CPU)", t.seconds, a.n * a.dim * 2, lambda x: fx.search(x, a.k), lambda r: r[1])
    except ImportError:
        print("faiss not installed: its row is skipped")
    for dtype in ("float32", "bfloat16"):
        with Timer() as t:
            index = ShardedMatmulIndex(vecs, devices=devices, dtype=dtype)
            if devices[0].startswith("cuda"):
                torch.cuda.synchronize()
        record(f"torch matmul {dtype} ({len(devices)}× {devices[0].split(':')[0]})", t.seconds, index.nbytes,
               lambda x, ix=index: ix.search(x, a.k), lambda r: r[1].numpy())
    if torch.cuda.is_available():
        results["gpu"] = torch.cuda.get_device_name(0)
    print_table(f"Dense search, {a.n:,} × {a.dim} vectors, {a.queries} queries, k={a.k}",
                ["backend", "build s", "MiB", "queries/s", "top-k overlap vs fp64"], rows)
    write_results(a.out, results, packages=("torch", "faiss-cpu"))


if __name__ == "__main__":
    main()
