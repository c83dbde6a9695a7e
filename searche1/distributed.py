"""Data parallelism for the training loops: ranks, whole-group sharding, global sums, gradient all-reduce.

Launch with ``accelerate launch --num_processes N -m searche1 train ...`` or ``torchrun --nproc_per_node N -m searche1
train ...``: both set ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``, and :func:`init_distributed` opens
the process group (NCCL on GPUs, gloo on CPUs). One process = one rank = one full replica of the policy.

How a GRPO step is split (``searche1.train``): every rank draws the same ``questions_per_step`` questions (same seed
and cursor) and keeps a contiguous shard of them, so each rank holds *whole groups* and computes the group-relative
advantages exactly, with no gather. Episodes are sampled from per-episode generators keyed by their global index
(:func:`searche1.rollout.hf_engine.episode_seed`), so the rollouts do not depend on the number of ranks. The loss
normaliser (token count, sequence count) is summed over ranks, each rank backpropagates its share, and the gradients
are **summed** with one all-reduce per step (not averaged as DDP does), which makes an N-rank step equal to the
single-process step on the same data up to floating-point summation order. A test runs 2 gloo processes against one.

Memory (``grpo.sharding``): ``none`` keeps full replicas of weights, gradients and AdamW state (the DDP layout);
``optimizer`` shards the AdamW state over the ranks, ZeRO stage 1 (:func:`make_adamw`; also ``ofsd.sharding``),
which is the largest part for full fine-tuning (8 bytes per parameter in fp32: 24 GB of a 3B policy, 3 GB per rank
on 8); ``full`` shards weights, gradients and state with FSDP (:mod:`searche1.sharding`). Departures: dev
evaluations and checkpoint writes happen on rank 0 while the other ranks wait at a barrier. OFSD phases run
data-parallel the same way (:mod:`searche1.ofsd.phase`: pairs owned by rank ``j mod world``, global normaliser,
summed gradients).
"""

from __future__ import annotations

import atexit
import os
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from searche1.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int, what: str = "questions_per_step") -> slice:
        """This rank's contiguous share of ``n`` items (``n`` must divide evenly)."""
        if n % self.world:
            raise ConfigError(f"{what}: {n} does not split evenly over {self.world} ranks (fix: use a multiple of "
                              f"{self.world})")
        k = n // self.world
        return slice(self.rank * k, (self.rank + 1) * k)

    def sum(self, x: float) -> float:
        return self.sum_all([x])[0]

    def sum_all(self, xs: list[float]) -> list[float]:
        """Element-wise sum of a list of numbers over ranks, one all-reduce."""
        return self._reduce(xs, "SUM")

    def _reduce(self, xs: list[float], op: str) -> list[float]:
        if not self.enabled:
            return [float(x) for x in xs]
        t = torch.tensor([float(x) for x in xs], dtype=torch.float64)
        torch.distributed.all_reduce(t, op=getattr(torch.distributed.ReduceOp, op))
        return t.tolist()

    def max(self, x: float) -> float:
        return self._reduce([x], "MAX")[0]

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over ranks (missing grads count as zero), one flat all-reduce."""
        if not self.enabled:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1).float() for p in params])
        torch.distributed.all_reduce(flat)
        off = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[off:off + n].view_as(p.grad))
            off += n

    def gather(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def process_group_backend(device: str) -> str:
    """The default process group's backend: gloo on CPUs; on GPUs NCCL for CUDA tensors **and** gloo for CPU ones.

    NCCL alone cannot reduce a CPU tensor ("No backend type associated with device type cpu"), and the loops'
    scalar sums (:meth:`Dist.sum_all`: loss normalisers, metrics) and object gathers (episode groups, pairs) are
    CPU-side, so every GPU step would fail at its first such call; with ``cpu:gloo,cuda:nccl`` those go over gloo
    (no device sync for a handful of floats) while gradients, FSDP and ZeRO traffic, all CUDA tensors, go over NCCL.
    """
    return "cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo"


def init_distributed(device: str = "cpu") -> Dist:
    """The current rank; opens the process group from the launcher's environment when ``WORLD_SIZE`` > 1.

    On GPUs it first makes ``cuda:LOCAL_RANK`` the process's current device (the launchers set ``LOCAL_RANK`` per
    node: on several nodes ``RANK`` counts over all of them, ``LOCAL_RANK`` from 0 on each), so NCCL and anything that
    allocates on plain ``cuda`` use this rank's GPU, not GPU 0."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not torch.distributed.is_initialized():
        if device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend=process_group_backend(device),
                                             timeout=timedelta(hours=2))  # evals run on rank 0
        atexit.register(_destroy_process_group)
    return Dist(rank=torch.distributed.get_rank(), world=torch.distributed.get_world_size())


def _destroy_process_group() -> None:
    """At exit: a gloo group left for the interpreter's teardown aborted the process about half the time
    ("terminate called without an active exception", exit 134: measured, 3 of 6 two-rank runs), so a finished
    run's rank could report a failure to its launcher. No barrier here: a rank leaving on an error must not wait."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


SHARED_CHECK = ".shared-check"


def check_shared_dir(dist: Dist, out: Path) -> None:
    """Fail on every rank unless all ranks see the files rank 0 writes into ``out`` (a collective).

    Every rank reads what rank 0 writes there: the checkpoint a resumed run starts from, each pipeline phase's
    starting policy, the run state. On several nodes ``out`` must therefore be one filesystem that every node mounts
    at the same path; on node-local disks the other nodes would resume from nothing, or start a phase from another
    policy, silently. Rank 0 writes a random token to ``out/.shared-check``, every rank reads it back, and the ranks
    that cannot are named. The file is removed afterwards."""
    if not dist.enabled:
        return
    path = out / SHARED_CHECK
    token = None
    if dist.is_main:
        token = secrets.token_hex(16)
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(token)
    token = dist.gather(token)[0]  # rank 0 wrote the file before it joined this gather
    try:
        seen = path.read_text() == token
    except OSError:
        seen = False
    blind = [r for r, ok in enumerate(dist.gather(seen)) if not ok]
    if dist.is_main:
        path.unlink(missing_ok=True)
    if blind:
        raise ConfigError(f"--out {out}: rank(s) {blind} of {dist.world} do not see the files rank 0 writes there; "
                          "every rank reads rank 0's checkpoints and phase outputs, so on several nodes the run "
                          "folder must be on a filesystem every node mounts at the same path (fix: --out on a "
                          "shared filesystem such as NFS or Lustre)")


def rank_device(device: str) -> str:
    """``cuda`` → ``cuda:LOCAL_RANK`` under a launcher; anything else unchanged."""
    if device in ("cuda", "auto") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def make_adamw(params: list[torch.nn.Parameter], *, lr: float, weight_decay: float, dist: "Dist",
               shard: bool = False) -> torch.optim.Optimizer:
    """AdamW; with ``shard`` under several ranks, ZeRO stage 1 (``torch.distributed.optim.ZeroRedundancyOptimizer``):
    each rank keeps the AdamW state of about 1/N of the parameters, updates only those and broadcasts them, so every
    rank ends the step with the same full weights. Gradients are still summed in full on every rank first (clipping
    needs the global norm). Its consolidated ``state_dict()`` uses global parameter indices like a plain AdamW's, so
    checkpoints move between sharded and unsharded runs; call :func:`consolidate_optimizer` on every rank first."""
    if shard and dist.enabled:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def consolidate_optimizer(opt: torch.optim.Optimizer) -> None:
    """Gather a ZeRO optimizer's state on rank 0 (a collective: call on every rank); a no-op for other optimizers."""
    if hasattr(opt, "consolidate_state_dict"):
        opt.consolidate_state_dict(to=0)


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of optimizer state tensors held by this rank (its own shard under ZeRO)."""
    inner = getattr(opt, "optim", opt)
    n = 0
    for st in inner.state.values():
        for v in st.values():
            if torch.is_tensor(v) and v.dim() > 0:
                n += (v.to_local() if hasattr(v, "to_local") else v).numel() * v.element_size()  # FSDP: the shard
    return n


def merge_metrics(parts: list[tuple[dict, float]]) -> dict:
    """Weighted mean of per-rank metric dicts (weight = the rank's episode count); a key missing on a rank
    counts as 0 there (e.g. ``rollout/stop_*`` fractions)."""
    total = sum(w for _, w in parts) or 1.0
    keys = sorted({k for m, _ in parts for k in m})
    return {k: sum(float(m.get(k, 0.0)) * w for m, w in parts) / total for k in keys}
