"""Exact inner-product top-k as a sharded matrix product: the dense index for GPUs without faiss-gpu.

The ``(N, D)`` passage vectors are split row-wise into one shard per device (e.g. the 8 GPUs of a node, or the same
CPU repeated in tests) and stored in ``dtype`` (``auto``: bf16 on GPUs, 2 bytes per entry, so 21M × 768 E5 vectors take
32 GB, 4 GB per GPU on 8; fp32 on CPUs, where bf16 matmul is emulated). A search sends the ``(Q, D)`` queries to every shard, computes ``scores = q @ shardᵀ`` in
chunks of ``chunk_rows`` rows (bounding the ``(Q, chunk)`` score block), keeps each chunk's top-k, and merges the
candidates on the CPU in fp32: ties go to the lower passage index, so the result does not depend on the sharding.

Departures from faiss ``IndexFlatIP``: scores are computed in ``dtype`` and accumulated by the matmul kernel (bf16
rounds vectors to 8 mantissa bits: near-ties may swap order; fp32 is exact up to summation order, and is what the
tests compare against a naive reference). Shards are sent work one after another from one thread: the devices run
concurrently because CUDA kernels are asynchronous, and the merge waits for all of them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from searche1.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_devices(devices: str | Sequence[str] = "auto") -> list[str]:
    """``auto`` → every visible GPU (else ``cpu``), but in one rank of a data-parallel run (``WORLD_SIZE`` > 1) only
    that rank's GPU (``cuda:LOCAL_RANK``), since every rank loads its own in-process index and would otherwise put a
    shard on every GPU, searched by all ranks at once; ``cuda`` → every visible GPU; ``cpu*3`` → 3 CPU shards
    (tests); a comma-separated string or a list → those devices."""
    if isinstance(devices, str):
        if devices in ("auto", "cuda"):
            n = torch.cuda.device_count()
            if devices == "auto" and n and int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ:
                return [f"cuda:{int(os.environ['LOCAL_RANK'])}"]
            if n == 0 and devices == "cuda":
                raise ConfigError("dense devices: 'cuda' asked for but no GPU is visible (fix: use 'cpu' or 'auto')")
            return [f"cuda:{i}" for i in range(n)] or ["cpu"]
        if "*" in devices:
            name, _, count = devices.partition("*")
            if not name.strip() or not count.strip().isdigit() or int(count) < 1:
                raise ConfigError(f"dense devices: {devices!r} is not DEVICE*COUNT with a count >= 1 "
                                  "(fix: e.g. 'cpu*3', or 'auto', 'cuda', 'cpu', 'cuda:0,cuda:1')")
            return [name.strip()] * int(count)
        devices = [d.strip() for d in devices.split(",") if d.strip()]
    if not devices:
        raise ConfigError("dense devices: empty list (fix: 'auto', 'cuda', 'cpu' or e.g. 'cuda:0,cuda:1')")
    return list(devices)


class ShardedMatmulIndex:
    """Row-sharded passage vectors with exact top-k inner-product search (module docstring)."""

    def __init__(self, vectors: np.ndarray | Tensor, devices: str | Sequence[str] = "auto",
                 dtype: str | torch.dtype = "auto", chunk_rows: int = 1 << 20) -> None:
        vecs = torch.as_tensor(vectors)
        if vecs.ndim != 2 or vecs.shape[0] == 0:
            raise ValueError(f"index vectors must be a non-empty (N, D) matrix, got shape {tuple(vecs.shape)}")
        self.devices = resolve_devices(devices)
        if dtype == "auto":  # bf16 on GPUs; fp32 on CPUs (bf16 matmul is emulated there and ~4x slower, measured)
            dtype = "bfloat16" if self.devices[0].startswith("cuda") else "float32"
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ConfigError(f"dense dtype: unknown '{dtype}' (fix: use auto or one of: {', '.join(DTYPES)})")
            dtype = DTYPES[dtype]
        if chunk_rows < 1:
            raise ValueError("chunk_rows: must be >= 1")
        self.dtype, self.chunk_rows = dtype, int(chunk_rows)
        self.ntotal, self.dim = int(vecs.shape[0]), int(vecs.shape[1])
        bounds = np.linspace(0, self.ntotal, len(self.devices) + 1).astype(int)
        self.offsets = bounds[:-1].tolist()
        self.shards = [vecs[a:b].to(device=dev, dtype=dtype).contiguous()
                       for a, b, dev in zip(bounds[:-1], bounds[1:], self.devices)]

    @property
    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.shards)

    @torch.no_grad()
    def search(self, queries: np.ndarray | Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-``k`` by inner product: ``(scores (Q, k) float32, ids (Q, k) int64)``, best first (CPU tensors)."""
        q = torch.as_tensor(queries)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (Q, {self.dim}), got {tuple(q.shape)}")
        k = max(1, min(int(k), self.ntotal))
        cand_s: list[Tensor] = []
        cand_i: list[Tensor] = []
        for off, shard in zip(self.offsets, self.shards):
            qd = q.to(device=shard.device, dtype=self.dtype)
            for c0 in range(0, shard.shape[0], self.chunk_rows):
                block = qd @ shard[c0:c0 + self.chunk_rows].T  # (Q, chunk)
                s, i = block.float().topk(min(k, block.shape[1]), dim=1)
                cand_s.append(s)
                cand_i.append(i + (off + c0))
        scores = torch.cat([s.cpu() for s in cand_s], dim=1)  # (Q, C)
        ids = torch.cat([i.cpu() for i in cand_i], dim=1)
        # best first, ties to the lower passage index: sort by id, then a stable sort by descending score
        by_id = ids.argsort(dim=1)
        scores, ids = scores.gather(1, by_id), ids.gather(1, by_id)
        order = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
        return scores.gather(1, order), ids.gather(1, order)
