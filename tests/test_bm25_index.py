import json

import pytest

from searche1.data.types import Passage
from searche1.errors import DataError
from searche1.retrieval.bm25 import BM25Retriever
from searche1.retrieval.index import build_index, load_retriever, read_index_meta
from searche1.retrieval.metrics import answer_recall, has_answer
from searche1.data.types import QAExample

PASSAGES = [
    Passage.from_title_text("d0", "Aardvark", "The aardvark is a burrowing mammal native to Africa."),
    Passage.from_title_text("d1", "Python (language)", "Python is a programming language created by Guido van Rossum."),
    Passage.from_title_text("d2", "Python (snake)", "Pythons are large snakes found in Africa, Asia and Australia."),
    Passage.from_title_text("d3", "Paris", "Paris is the capital and largest city of France."),
    Passage.from_title_text("d4", "Berlin", "Berlin is the capital of Germany; it was divided during the Cold War."),
]


@pytest.fixture(scope="module")
def bm25():
    return BM25Retriever.build(PASSAGES, show_progress=False)


def test_bm25_ranks_the_obvious_passage_first(bm25):
    res = bm25.search(["who created the python programming language", "capital of France", "snakes in Australia"], 3)
    assert [r[0].id for r in res] == ["d1", "d3", "d2"]
    for row in res:
        assert len(row) == 3
        assert [h.score for h in row] == sorted((h.score for h in row), reverse=True)
    # stemming: "burrowed" / "mammals" match "burrowing" / "mammal"
    assert bm25.search(["burrowed mammals"], 1)[0][0].id == "d0"


def test_bm25_edge_cases(bm25):
    assert bm25.search([], 3) == []
    (row,) = bm25.search(["qwertyuiop zzzz"], 2)  # no known word: still topk hits, score 0
    assert len(row) == 2 and all(h.score == 0 for h in row)
    assert len(bm25.search(["Paris"], 50)[0]) == len(PASSAGES)  # topk clamped to corpus size


QUERIES = [
    "who created the python programming language", "Capital of FRANCE", "pythons snakes burrowed mammals",
    "the and of it is", "qwertyuiop zzzz python", "Berlin's Cold-War division", "Aardvarks of Afrika", "",
    "Guido van Rossum 1991", "café naïve Größe python",
]


@pytest.mark.parametrize("stemmer", ["english", None])
def test_bm25_query_tokens_match_bm25s(stemmer):
    """Our read-only query tokenisation gives bm25s's own token ids (bm25s's tokenize on a copy of the tables)."""
    import copy

    r = BM25Retriever.build(PASSAGES, stemmer=stemmer, show_progress=False)
    ref_tok = copy.copy(r._tokenizer)
    ref_tok.word_to_stem, ref_tok.stem_to_sid, ref_tok.word_to_id = (
        dict(r._tokenizer.word_to_stem), dict(r._tokenizer.stem_to_sid), dict(r._tokenizer.word_to_id))
    ref = ref_tok.tokenize(QUERIES, update_vocab=False, return_as="ids", show_progress=False)
    empty = r._tokenizer.word_to_id.get("")
    for q, want in zip(QUERIES, ref):
        assert r._query_ids(q) == [t for t in want if t != empty], q


def test_bm25_tokenizer_tables_do_not_grow(tmp_path):
    """bm25s's tokenize(update_vocab=False) records every unseen query word; a long-lived server must not grow."""
    build_index(PASSAGES, tmp_path / "idx", show_progress=False)
    r = load_retriever(tmp_path / "idx")
    tok = r._tokenizer
    before = (dict(tok.word_to_stem), dict(tok.stem_to_sid), dict(tok.word_to_id))
    unknown = [f"xq{i}zz word{i}y pythons burrowed Mammals" for i in range(300)]
    for i in range(0, len(unknown), 64):
        r.search(unknown[i:i + 64], 2)
    assert (tok.word_to_stem, tok.stem_to_sid, tok.word_to_id) == before
    assert r.search(["pythons burrowed"], 1)[0][0].id in {"d0", "d2"}


def test_bm25_empty_passage_never_matches_unknown_queries():
    """An empty or stopword-only passage is indexed with bm25s's "" token; a query with no known words (or only
    stopwords) must score every passage 0, not retrieve that passage through the "" token."""
    ps = [Passage("p0", "apple banana"), Passage("p1", "cherry apple"), Passage("p2", "zebra"),
          Passage("p3", ""), Passage("p4", "the and of")]
    r = BM25Retriever.build(ps, show_progress=False)
    for q in ["xyzzy plugh", "", "the of", "!!! ???"]:
        (row,) = r.search([q], 5)
        assert [h.score for h in row] == [0.0] * 5, (q, row)
    (row,) = r.search(["apple"], 2)
    assert {h.id for h in row} == {"p0", "p1"} and all(h.score > 0 for h in row)


def test_index_folder_roundtrip_and_atomicity(tmp_path, bm25):
    out = tmp_path / "idx"
    build_index(PASSAGES, out, kind="bm25", show_progress=False)
    meta = read_index_meta(out)
    assert meta["kind"] == "bm25" and meta["num_docs"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    r = load_retriever(out)
    q = ["capital of Germany cold war", "python language"]
    assert [[h.id for h in row] for row in r.search(q, 3)] == [[h.id for h in row] for row in bm25.search(q, 3)]
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_index(PASSAGES, out, kind="bm25", show_progress=False)
    build_index(PASSAGES[:3], out, kind="bm25", overwrite=True, show_progress=False)
    assert read_index_meta(out)["num_docs"] == 3


def test_failed_build_leaves_nothing(tmp_path):
    out = tmp_path / "idx"
    with pytest.raises(DataError, match="no passages"):
        build_index([], out, kind="bm25", show_progress=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_an_index(tmp_path):
    """`searche1 index --out RUN --overwrite` deleted a training run (any folder) to put the index there."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(FileExistsError, match="no searche1_index.json; it holds checkpoints, metrics.jsonl"):
        build_index(PASSAGES, run, overwrite=True, show_progress=False)
    assert (run / "metrics.jsonl").read_text() == "{}\n" and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    build_index(PASSAGES, tmp_path / "idx", show_progress=False)
    build_index(PASSAGES[:2], tmp_path / "idx", overwrite=True, show_progress=False)
    assert read_index_meta(tmp_path / "idx")["num_docs"] == 2


def test_empty_corpus_file_is_a_data_error(tmp_path):
    """`searche1 index --corpus EMPTY` was a ValueError traceback from bm25s; now a DataError naming the file."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.jsonl: holds no passages") as e:
        build_index(empty, tmp_path / "idx", show_progress=False)
    assert "fix:" in str(e.value) and not (tmp_path / "idx").exists()


def test_build_from_file_and_bad_index(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(p.to_json()) + "\n" for p in PASSAGES))
    build_index(corpus, tmp_path / "idx", show_progress=False)
    assert read_index_meta(tmp_path / "idx")["corpus"] == str(corpus)
    with pytest.raises(DataError, match="not a searche1 index"):
        load_retriever(tmp_path)
    (tmp_path / "idx" / "corpus.jsonl").write_text(json.dumps(PASSAGES[0].to_json()) + "\n")
    with pytest.raises(DataError, match="rebuild"):
        load_retriever(tmp_path / "idx")


def test_answer_recall(bm25):
    exs = [QAExample("1", "capital of France", ["Paris"]), QAExample("2", "capital of France", ["Madrid"])]
    assert answer_recall(bm25, exs, topk=1) == 0.5
    assert has_answer("The city of Paris.", ["paris"]) and not has_answer("Parisian", ["Paris"])


def test_bm25s_import_keeps_jax_off_the_gpu(monkeypatch):
    """bm25s runs a jax op at import; jax would then reserve 75% of GPU memory (an H100 GRPO step ran out of it)."""
    import os
    import sys

    from searche1.retrieval.bm25 import import_bm25s

    monkeypatch.delitem(sys.modules, "jax", raising=False)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    assert import_bm25s().BM25 is not None
    assert os.environ["JAX_PLATFORMS"] == "cpu"
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")  # the user's own choice wins
    import_bm25s()
    assert os.environ["JAX_PLATFORMS"] == "cuda"
