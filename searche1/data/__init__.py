"""Data layer: QA and corpus loaders, and the synthetic world generator."""

from searche1.data.types import Passage, QAExample

__all__ = ["Passage", "QAExample"]
