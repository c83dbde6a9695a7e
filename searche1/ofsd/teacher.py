"""Cached top-k teacher targets for the OFSD phase: sharded safetensors files, written atomically, read shard by shard.

In ``teacher_mode = "topk"`` the frozen teacher is run **once** over every distillation pair before training, and
its distribution at each of the student trajectory's policy tokens is stored as the ``k`` most likely token ids, their
log-probs and the log of the remaining mass (:func:`searche1.algos.distill.topk_teacher`). Training then reads
these targets back instead of running the teacher in every micro-batch (:func:`searche1.algos.distill.forward_kl_topk`).

Layout of the folder (``<work_dir>/teacher/``)::

    index.json                  {"format", "k", "temperature", "num_pairs", "tokens", "data_bytes",
                                 "shards": [{"file", "first_pair", "num_pairs", "tokens"}, ...], ...meta}
    shard-00000.safetensors     idx (N, k) int32, logp (N, k) float32, tail (N,) float32, offsets (n + 1,) int64
    shard-00001.safetensors     ...

Only policy tokens are stored (never prompt, ``<information>`` or padding): pair ``j`` of a shard owns rows
``offsets[j]:offsets[j + 1]``, one row per policy token of its student trajectory, in order. So the data costs
``k·(4 + 4) + 4`` bytes per token (int32 ids, fp32 log-probs, one fp32 tail); ``offsets`` and headers are a few
bytes per pair on top (``data_bytes`` counts tensor bytes only; :attr:`TeacherShards.disk_bytes` the files' sizes).

**Atomicity.** :func:`write_teacher_shards` builds the whole folder in a hidden temporary sibling
(:func:`searche1.io.atomic_dir`) and renames it into place at the end, so a crash or exception mid-way never leaves a
half-written ``teacher/`` folder visible; an existing folder (the previous phase's) is replaced only once the new one
is complete.

**Reading.** :class:`TeacherShards` loads one shard file at a time (keeping the ``cache_shards`` most recently used in
memory), so the trainer visits pairs shard by shard (see ``searche1.ofsd.phase.epoch_order``) and memory stays at a
shard, not the whole cache.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from searche1.io import atomic_dir, write_json

__all__ = ["FORMAT", "TeacherShards", "bytes_per_token", "write_teacher_shards"]

FORMAT = "searche1-teacher-topk/1"
INDEX = "index.json"


def bytes_per_token(k: int) -> int:
    """Stored data bytes per policy token: ``k`` int32 ids + ``k`` fp32 log-probs + one fp32 tail log-prob."""
    return k * (4 + 4) + 4


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def _flush(tmp: Path, shard_no: int, first_pair: int, rows: list[tuple[Tensor, Tensor, Tensor]], k: int) -> dict:
    from safetensors.torch import save_file

    lens = [r[0].shape[0] for r in rows]
    offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(lens, dtype=torch.int64).cumsum(0)
    tensors = {
        "idx": torch.cat([r[0] for r in rows]).to(torch.int32).reshape(-1, k).contiguous(),
        "logp": torch.cat([r[1] for r in rows]).to(torch.float32).reshape(-1, k).contiguous(),
        "tail": torch.cat([r[2] for r in rows]).to(torch.float32).reshape(-1).contiguous(),
        "offsets": offsets,
    }
    name = _shard_name(shard_no)
    save_file(tensors, str(tmp / name), metadata={"format": FORMAT, "first_pair": str(first_pair)})
    return {"file": name, "first_pair": first_pair, "num_pairs": len(rows), "tokens": int(offsets[-1]),
            "data_bytes": sum(int(tensors[n].nbytes) for n in ("idx", "logp", "tail"))}


def write_teacher_shards(
    path: str | Path,
    records: Iterable[tuple[Tensor, Tensor, Tensor]],
    *,
    k: int,
    pairs_per_shard: int = 64,
    temperature: float = 1.0,
    meta: dict | None = None,
) -> dict:
    """Write one record per pair — ``(idx (N, k), logp (N, k), tail (N,))`` over its ``N`` policy tokens, in pair
    order — into ``path`` as shards of ``pairs_per_shard`` pairs plus ``index.json``, atomically (module docstring).

    ``records`` may be a generator (the teacher runs while shards are written). Returns the index dict.
    """
    if k < 1 or pairs_per_shard < 1:
        raise ValueError(f"k and pairs_per_shard must be >= 1, got {k} and {pairs_per_shard}")
    shards: list[dict] = []
    with atomic_dir(path, overwrite=True) as tmp:
        buf: list[tuple[Tensor, Tensor, Tensor]] = []
        n = 0
        for idx, logp, tail in records:
            rows = idx.shape[0]
            if tuple(idx.shape) != (rows, k) or tuple(logp.shape) != (rows, k) or tuple(tail.shape) != (rows,):
                raise ValueError(f"pair {n}: expected idx and logp (N, {k}) and tail (N,); got {tuple(idx.shape)}, "
                                 f"{tuple(logp.shape)}, {tuple(tail.shape)}")
            buf.append((idx.detach().cpu(), logp.detach().cpu(), tail.detach().cpu()))
            n += 1
            if len(buf) == pairs_per_shard:
                shards.append(_flush(tmp, len(shards), n - len(buf), buf, k))
                buf = []
        if buf:
            shards.append(_flush(tmp, len(shards), n - len(buf), buf, k))
        index = {**(meta or {}), "format": FORMAT, "k": k, "temperature": float(temperature), "num_pairs": n,
                 "pairs_per_shard": pairs_per_shard, "tokens": sum(s["tokens"] for s in shards),
                 "data_bytes": sum(s["data_bytes"] for s in shards), "shards": shards}
        write_json(tmp / INDEX, index)
    return index


class TeacherShards:
    """Read-only view of a folder written by :func:`write_teacher_shards`; ``get(j)`` returns pair ``j``'s targets."""

    def __init__(self, path: str | Path, *, cache_shards: int = 2) -> None:
        self.path = Path(path)
        index_file = self.path / INDEX
        if not index_file.is_file():
            raise FileNotFoundError(f"{self.path}: no {INDEX} (not a complete teacher cache; rerun the teacher pass)")
        self.index = json.loads(index_file.read_text(encoding="utf-8"))
        if self.index.get("format") != FORMAT:
            raise ValueError(f"{index_file}: unknown format {self.index.get('format')!r} (expected {FORMAT})")
        self.k: int = int(self.index["k"])
        self.temperature: float = float(self.index.get("temperature", 1.0))
        self.num_pairs: int = int(self.index["num_pairs"])
        self.tokens: int = int(self.index["tokens"])
        self._first = [int(s["first_pair"]) for s in self.index["shards"]]
        self._cache: OrderedDict[int, dict[str, Tensor]] = OrderedDict()
        self._cache_shards = max(1, cache_shards)
        self.loads = 0  # shard files read so far (to check the access pattern)

    def __len__(self) -> int:
        return self.num_pairs

    @property
    def num_shards(self) -> int:
        return len(self._first)

    @property
    def data_bytes(self) -> int:
        return int(self.index["data_bytes"])

    @property
    def disk_bytes(self) -> int:
        files = [self.path / s["file"] for s in self.index["shards"]] + [self.path / INDEX]
        return sum(f.stat().st_size for f in files)

    def shard_of(self, pair: int) -> int:
        """The shard holding pair ``pair``."""
        if not 0 <= pair < self.num_pairs:
            raise IndexError(f"pair {pair} out of range (cache holds {self.num_pairs})")
        lo, hi = 0, len(self._first) - 1
        while lo < hi:  # last shard whose first_pair <= pair
            mid = (lo + hi + 1) // 2
            if self._first[mid] <= pair:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _shard(self, s: int) -> dict[str, Tensor]:
        if s in self._cache:
            self._cache.move_to_end(s)
            return self._cache[s]
        from safetensors.torch import load_file

        data = load_file(str(self.path / self.index["shards"][s]["file"]))
        self.loads += 1
        self._cache[s] = data
        while len(self._cache) > self._cache_shards:
            self._cache.popitem(last=False)
        return data

    def get(self, pair: int) -> tuple[Tensor, Tensor, Tensor]:
        """``idx (N, k) int64, logp (N, k) fp32, tail (N,) fp32`` of pair ``pair`` (``N`` = its policy tokens)."""
        s = self.shard_of(pair)
        d = self._shard(s)
        j = pair - self._first[s]
        a, b = int(d["offsets"][j]), int(d["offsets"][j + 1])
        return d["idx"][a:b].long(), d["logp"][a:b], d["tail"][a:b]
