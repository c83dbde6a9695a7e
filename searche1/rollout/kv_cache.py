"""A KV cache that grows in place, for the HF engine's token-by-token decoding.

transformers' ``DynamicCache`` appends each new token with ``torch.cat``, which copies the whole cache of every
layer at every decoding step: O(L) bytes per token, O(L²) per turn. On a CPU that copy is a large share of a
step (``benchmarks/kv_cache.py``, SmolLM2-135M, batch 20, 2 threads: 220 → 204 ms per step at 150 cached tokens,
420 → 337 ms at 800, 680 → 417 ms at 1,600). :class:`GrowingCache` keeps each layer's keys and values in a buffer
with spare room (grown by half when full, so copies are amortised O(1) per token) and hands attention a view of
the filled part. The numbers it holds are the same: only where they live changes (tested: identical logits).

It supports what the engine uses: ``update``, ``get_seq_length``, ``batch_select_indices`` (rows leave the batch)
and ``batch_repeat_interleave`` (the shared-prefix prefill). With a transformers version whose cache has no
per-layer classes (< 4.56), :func:`make_cache` returns a plain ``DynamicCache``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["GROWTH", "MIN_SPARE", "make_cache"]

GROWTH = 1.5  # a full buffer is replaced by one this many times larger (at least MIN_SPARE more tokens)
MIN_SPARE = 64


@functools.lru_cache(maxsize=1)
def _growing_layer_class() -> Any:
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys/values are views of a buffer with spare room (module docstring)."""

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            super().lazy_initialization(key_states, value_states)
            self._len = 0
            self._bk: torch.Tensor | None = None
            self._bv: torch.Tensor | None = None

        def _views(self) -> None:
            self.keys = self._bk[..., : self._len, :]
            self.values = self._bv[..., : self._len, :]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            need = self._len + key_states.shape[-2]
            if self._bk is None or need > self._bk.shape[-2]:
                old = 0 if self._bk is None else self._bk.shape[-2]
                cap = max(need + MIN_SPARE, int(old * GROWTH))
                b, h, _, d = key_states.shape
                bk = key_states.new_empty((b, h, cap, d))
                bv = value_states.new_empty((b, value_states.shape[1], cap, value_states.shape[-1]))
                if self._len:
                    bk[..., : self._len, :] = self._bk[..., : self._len, :]
                    bv[..., : self._len, :] = self._bv[..., : self._len, :]
                self._bk, self._bv = bk, bv
            self._bk[..., self._len : need, :] = key_states
            self._bv[..., self._len : need, :] = value_states
            self._len = need
            self._views()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self._len if self.is_initialized else 0

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized and self._bk is not None:
                self._bk, self._bv = self._bk[indices], self._bv[indices]
                self._views()

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.is_initialized and self._bk is not None:
                self._bk = self._bk.repeat_interleave(repeats, dim=0)
                self._bv = self._bv.repeat_interleave(repeats, dim=0)
                self._views()

        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove > 0:
                raise ValueError("crop takes a negative number of tokens to remove")
            if self.is_initialized and tokens_to_remove:
                self._len = max(0, self._len + tokens_to_remove)
                self._views()

        def reset(self) -> None:
            self._bk = self._bv = None
            self._len = 0
            super().reset()

    return GrowingLayer


def make_cache() -> Any:
    """An empty growing KV cache (a ``DynamicCache`` whose layers are growing ones), or a plain ``DynamicCache``
    where transformers has no per-layer cache classes to subclass."""
    from transformers import DynamicCache

    cache = DynamicCache()
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return cache
    if getattr(cache, "layer_class_to_replicate", None) is not DynamicLayer:
        return cache
    cache.layer_class_to_replicate = _growing_layer_class()
    return cache
