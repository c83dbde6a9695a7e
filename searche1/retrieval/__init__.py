"""Retrieval: the :class:`Retriever` protocol, BM25/dense indexes, the HTTP server and client, and an LRU cache."""

from searche1.errors import RetrievalError
from searche1.retrieval.base import Hit, Retriever, join_contents, split_contents

__all__ = ["Hit", "Retriever", "RetrievalError", "join_contents", "split_contents"]
