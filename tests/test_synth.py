"""Tests of the synthetic world generator (searche1.data.synth): determinism, answerability, uniqueness, multi-hop
structure and the atomic writer."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from searche1.data.synth import DATASETS, MULTIHOP, SINGLE, generate_world, write_world
from searche1.data.synth_names import _BLOCKLIST, _SUFFIXES, _NameBank, _blocklist_for, _token_regex
from searche1.data.types import Passage, QAExample

DICT_WORDS = Path("/usr/share/dict/words")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world():
    return generate_world(seed=0)


def _digest(world) -> str:
    h = hashlib.sha256()
    for p in world.passages:
        h.update(json.dumps(p.to_json()).encode())
    for name in sorted(world.questions):
        for q in world.questions[name]:
            h.update(json.dumps(q.to_json()).encode())
    return h.hexdigest()


def _all_questions(world) -> list[QAExample]:
    return [q for name in DATASETS for q in world.questions[name]]


# -- determinism ------------------------------------------------------------------------------------------------------


def test_same_seed_same_world(world):
    again = generate_world(seed=0)
    assert again.passages == world.passages
    assert [q.to_json() for q in _all_questions(again)] == [q.to_json() for q in _all_questions(world)]


def test_different_seed_different_world(world):
    other = generate_world(seed=1)
    assert _digest(other) != _digest(world)
    assert {p.title for p in other.passages} != {p.title for p in world.passages}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_across_processes_with_different_hash_seeds(tmp_path):
    """String hashing is salted per process; the world must not depend on it."""
    here = write_world(generate_world(seed=5), tmp_path / "here")
    code = "import sys; from searche1.data.synth import *; write_world(generate_world(seed=5), sys.argv[1])"
    for hash_seed in ("1", "98765"):
        out = tmp_path / f"proc{hash_seed}"
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, env=env, check=True, timeout=120)
        assert _files(out) == _files(here)


def test_written_files_byte_identical(tmp_path):
    a = write_world(generate_world(seed=3), tmp_path / "a")
    b = write_world(generate_world(seed=3), tmp_path / "b")
    c = write_world(generate_world(seed=4), tmp_path / "c")
    assert _files(a) == _files(b)
    assert set(_files(a)) == set(_files(c)) == {
        "README.md", "corpus.jsonl", "searche1_world.json", "train/synth_single.jsonl", "train/synth_multihop.jsonl",
        "dev/synth_single.jsonl", "dev/synth_multihop.jsonl",
    }
    assert _files(a)["corpus.jsonl"] != _files(c)["corpus.jsonl"]


# -- sizes and shapes -------------------------------------------------------------------------------------------------


def test_default_sizes_and_speed():
    t0 = time.perf_counter()
    w = generate_world(seed=7)
    assert time.perf_counter() - t0 < 1.0
    assert 300 <= len(w.passages) <= 600
    for name in DATASETS:
        assert len(w.train[name]) == 200
        assert len(w.dev[name]) == 100
        assert {q.dataset for q in w.questions[name]} == {name}


def test_splits_partition_the_questions(world):
    for name in DATASETS:
        ids = [q.id for q in world.questions[name]]
        train = [q.id for q in world.train[name]]
        dev = [q.id for q in world.dev[name]]
        assert sorted(train + dev) == sorted(ids)
        assert not set(train) & set(dev)
    texts = [q.question for q in _all_questions(world)]
    assert len(texts) == len(set(texts))  # no question asked twice, in either split


def test_small_world_keeps_ratio():
    w = generate_world(seed=2, n_people=8, n_train=200, n_dev=100)
    for name in DATASETS:
        assert w.train[name] and w.dev[name]
        assert len(w.train[name]) >= len(w.dev[name])


def test_bad_arguments():
    with pytest.raises(ValueError):
        generate_world(n_people=2)
    with pytest.raises(TypeError):
        generate_world(seed="0")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        world = generate_world(seed=0)
        world.split("test")


def test_passage_format(world):
    for p in world.passages:
        assert isinstance(p, Passage)
        assert re.fullmatch(r"syn-\d{6}", p.id)
        assert p.contents.startswith('"') and "\n" in p.contents
        assert p.title and p.text
    assert any(p.title.endswith("(surname)") for p in world.passages)  # distractor pages
    assert any(p.title.startswith("New ") for p in world.passages)  # distractor towns


# -- uniqueness -------------------------------------------------------------------------------------------------------


def test_unique_ids_and_names(world):
    ids = [p.id for p in world.passages]
    assert len(ids) == len(set(ids))
    qids = [q.id for q in _all_questions(world)]
    assert len(qids) == len(set(qids))
    names = [name for name, _ in world.entities]
    assert len(names) == len(set(names))
    kinds = {kind for _, kind in world.entities}
    assert kinds == {"person", "company", "city", "country", "river", "mountain"}
    titles = {p.title for p in world.passages}
    assert set(names) <= titles  # every entity has its own passages


def _name_tokens(world) -> list[str]:
    fixed = {"Mount", "River", "New", "Company", "Works", "Sons", "Brothers", "Holdings", "Trading", "&"}
    return [tok for name, _ in world.entities for tok in name.split() if tok not in fixed]


def test_names_are_not_blocked_words(world):
    toks = _name_tokens(world)
    assert toks
    for tok in toks:
        assert tok.lower() not in _BLOCKLIST
        assert tok.isalpha() and tok[0].isupper()


def test_token_regex_covers_every_drawn_name():
    """The blocklist is only exhaustive if the grammar regex really describes what the name bank spells."""
    pattern = _token_regex()
    bank = _NameBank(random.Random(0))
    for kind in _SUFFIXES:
        for _ in range(1500):
            token = bank.draw(kind)
            assert pattern.fullmatch(token.lower()), (kind, token)


@pytest.mark.skipif(not DICT_WORDS.is_file(), reason="no system word list")
def test_blocklist_covers_the_word_list():
    with open(DICT_WORDS, encoding="utf-8", errors="ignore") as f:
        missing = set(_blocklist_for(f)) - _BLOCKLIST
    assert not missing, f"regenerate _BLOCKLIST_TEXT, these English words are spellable: {sorted(missing)[:20]}"


@pytest.mark.skipif(not DICT_WORDS.is_file(), reason="no system word list")
def test_names_are_not_english_words():
    with open(DICT_WORDS, encoding="utf-8", errors="ignore") as f:
        english = {w.strip().lower() for w in f}
    for seed in range(5):
        w = generate_world(seed=seed)
        clashes = sorted({t for t in _name_tokens(w) if t.lower() in english})
        assert not clashes, (seed, clashes)


# -- answerability ----------------------------------------------------------------------------------------------------


def test_every_answer_is_in_a_gold_passage(world):
    by_id = world.passage_by_id()
    for q in _all_questions(world):
        gold = q.metadata["gold_doc_ids"]
        assert gold and all(g in by_id for g in gold), q.id
        assert q.answers and all(a for a in q.answers)
        for answer in q.answers:
            assert any(answer in by_id[g].contents for g in gold), (q.id, answer)
        # more precisely: the last hop's passage states the answer
        assert q.answers[0] in by_id[gold[-1]].contents


def test_chain_is_consistent_with_the_corpus(world):
    by_id = world.passage_by_id()
    for q in _all_questions(world):
        chain = q.metadata["chain"]
        assert len(chain) == q.metadata["hops"] == len(q.metadata["gold_doc_ids"])
        assert [s["doc_id"] for s in chain] == q.metadata["gold_doc_ids"]
        assert chain[-1]["object"] == q.answers[0]
        assert q.metadata["signature"] == ">".join(s["relation"] for s in chain)
        for i, step in enumerate(chain):
            doc = by_id[step["doc_id"]]
            assert doc.title == step["subject"]  # each hop is read off its subject's own passage
            assert step["object"] in doc.contents
            if i + 1 < len(chain):
                assert chain[i + 1]["subject"] == step["object"]
        assert chain[0]["subject"] in q.question


def test_answers_are_unambiguous(world):
    # relations are functional: the same (subject, relation) never leads to two different objects
    seen: dict[tuple[str, str], str] = {}
    for q in _all_questions(world):
        for step in q.metadata["chain"]:
            key = (step["subject"], step["relation"])
            assert seen.setdefault(key, step["object"]) == step["object"], key
    # and a question text always has the same single answer
    answers: dict[str, list[str]] = {}
    for q in _all_questions(world):
        assert len(q.answers) == 1
        assert answers.setdefault(q.question, q.answers) == q.answers


def test_single_hop_questions(world):
    for q in world.questions[SINGLE]:
        assert q.metadata["hops"] == 1
        assert len(q.metadata["gold_doc_ids"]) == 1


def test_multihop_needs_distinct_passages(world):
    by_id = world.passage_by_id()
    hops = set()
    for q in world.questions[MULTIHOP]:
        gold = q.metadata["gold_doc_ids"]
        hops.add(q.metadata["hops"])
        assert 2 <= q.metadata["hops"] <= 3
        assert len(set(gold)) == len(gold) >= 2
        subjects = [s["subject"] for s in q.metadata["chain"]]
        assert len(set(subjects)) == len(subjects)
        # the answer cannot be read off any earlier hop's passage
        for g in gold[:-1]:
            assert q.answers[0] not in by_id[g].contents, q.id
        # intermediate entities are not named in the question
        for step in q.metadata["chain"][:-1]:
            assert step["object"] not in q.question, q.id
    assert hops == {2, 3}


def test_composed_question_wording():
    found = 0
    for seed in range(3):
        for q in generate_world(seed=seed).questions[MULTIHOP]:
            if q.metadata["signature"] == "founder>birthplace>country":
                company = q.metadata["chain"][0]["subject"]
                assert q.question.startswith("In which country is the birthplace of the founder of ")
                assert q.question.endswith(f"{company}?")
                found += 1
    assert found


# -- writing ----------------------------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_write_world_round_trip(world, tmp_path):
    out = write_world(world, tmp_path / "synth")
    assert out == tmp_path / "synth"
    corpus = _read_jsonl(out / "corpus.jsonl")
    assert corpus == [p.to_json() for p in world.passages]
    for split in ("train", "dev"):
        for name in DATASETS:
            recs = _read_jsonl(out / split / f"{name}.jsonl")
            assert recs == [q.to_json() for q in world.split(split)[name]]
            for r in recs:
                assert set(r) == {"id", "question", "golden_answers", "metadata"}
                assert r["metadata"]["split"] == split
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "seed=0" in readme and str(len(world.passages)) in readme
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]  # no temp dirs left behind


def test_write_world_refuses_to_overwrite(world, tmp_path):
    out = tmp_path / "synth"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        write_world(world, out)
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]

    other = generate_world(seed=1)
    with pytest.raises(FileExistsError, match="no searche1_world.json; it holds keep.txt"):  # not a world: kept
        write_world(other, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "precious"
    write_world(world, out / "w")
    (out / "w" / "keep.txt").write_text("a world's extra file")
    write_world(other, out / "w", overwrite=True)
    out = out / "w"
    assert not (out / "keep.txt").exists()
    assert _read_jsonl(out / "corpus.jsonl") == [p.to_json() for p in other.passages]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]


def test_write_world_overwrite_never_replaces_an_index_or_a_dataset(world, tmp_path):
    """A BM25 index and the searchqa data hold a corpus.jsonl too: that alone does not make a folder a world."""
    from searche1.retrieval.index import build_index

    data = write_world(world, tmp_path / "w")
    idx = build_index(data / "corpus.jsonl", tmp_path / "idx", kind="bm25")
    qa = tmp_path / "searchqa"
    (qa / "dev").mkdir(parents=True)
    (qa / "corpus.jsonl").write_text((data / "corpus.jsonl").read_text())
    (qa / "README.md").write_text("# searchqa\n")
    for folder in (idx, qa):
        before = _files(folder)
        with pytest.raises(FileExistsError, match="no searche1_world.json"):
            write_world(world, folder, overwrite=True)
        assert _files(folder) == before


def test_write_world_overwrites_a_world_written_before_the_marker(world, tmp_path):
    out = write_world(generate_world(seed=1), tmp_path / "old")
    (out / "searche1_world.json").unlink()  # what a world written by an older version looks like
    write_world(world, out, overwrite=True)
    assert _read_jsonl(out / "corpus.jsonl") == [p.to_json() for p in world.passages]
    assert json.loads((out / "searche1_world.json").read_text())["seed"] == world.seed


def test_write_world_into_empty_dir_and_file_target(world, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    write_world(world, empty)
    assert (empty / "corpus.jsonl").is_file()
    target = tmp_path / "afile"
    target.write_text("x")
    with pytest.raises(FileExistsError):
        write_world(world, target, overwrite=True)
