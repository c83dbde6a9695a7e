"""searche1: train and evaluate search-augmented reasoning agents with the Search-E1 recipe."""

__version__ = "0.1.0"
