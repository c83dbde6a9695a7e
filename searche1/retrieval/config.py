"""Retrieval configuration and the one function that turns it into a (cached) retriever."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from searche1.errors import ConfigError
from searche1.retrieval.base import Retriever


@dataclass
class RetrievalConfig:
    index: Path | None = field(default=None, metadata={"help": "index folder built by `searche1 index` (in-process)"})
    url: str | None = field(default=None, metadata={"help": "retrieval server URL, e.g. http://127.0.0.1:8000"})
    cache_size: int = field(default=100_000, metadata={"help": "LRU cache entries; 0 disables the cache"})
    timeout_s: float = field(default=30.0, metadata={"help": "HTTP timeout per request"})
    retries: int = field(default=3, metadata={"help": "HTTP retries with exponential backoff"})
    dense_backend: str = field(default="faiss", metadata={
        "help": "dense indexes: faiss (CPU) | torch (bf16 matmul shards over the GPUs, exact top-k)"})
    dense_devices: str = field(default="auto", metadata={
        "help": "torch backend: auto (all visible GPUs, else cpu) | cuda | cpu | e.g. cuda:0,cuda:1"})
    dense_dtype: str = field(default="auto", metadata={
        "help": "torch backend: auto (bf16 on GPUs, fp32 on CPU) | bfloat16 | float16 | float32"})

    def validate(self) -> None:
        if (self.index is None) == (self.url is None):
            raise ConfigError("index/url: set exactly one of `index` (a local index folder) or `url` (a server)")
        if self.dense_backend not in ("faiss", "torch"):
            raise ConfigError(f"dense_backend: unknown '{self.dense_backend}' (fix: use faiss or torch)")
        if self.dense_dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ConfigError(f"dense_dtype: unknown '{self.dense_dtype}' (fix: use auto, bfloat16, float16 or "
                              "float32)")
        if self.cache_size < 0:
            raise ConfigError("cache_size: must be >= 0 (0 disables the cache)")


def make_retriever(cfg: RetrievalConfig) -> Retriever:
    """In-process index or HTTP client, wrapped in the LRU cache unless ``cache_size`` is 0."""
    cfg.validate()
    if cfg.index is not None:
        from searche1.retrieval.index import load_retriever

        inner = load_retriever(cfg.index, dense={"backend": cfg.dense_backend, "devices": cfg.dense_devices,
                                                 "dtype": cfg.dense_dtype})
    else:
        from searche1.retrieval.client import RemoteRetriever

        inner = RemoteRetriever(cfg.url, timeout=cfg.timeout_s, retries=cfg.retries)
    if cfg.cache_size == 0:
        return inner
    from searche1.retrieval.cache import CachedRetriever

    return CachedRetriever(inner, maxsize=cfg.cache_size)
