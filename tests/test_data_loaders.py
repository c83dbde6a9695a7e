"""Tests of the QA and corpus loaders (searche1.data.qa, searche1.data.corpus)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from searche1.data.corpus import iter_corpus, load_corpus, write_corpus
from searche1.data.qa import load_qa, load_qa_files, write_qa
from searche1.data.types import Passage, QAExample
from searche1.errors import DataError

from conftest import SEARCHQA, requires_searchqa

SR1_PROMPT = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you get new "
    "information. ... For example, <answer> Beijing </answer>. Question: {q}\n"
)


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def assert_error(exc: pytest.ExceptionInfo, path: Path, line: int | None, field: str | None) -> None:
    msg = str(exc.value)
    assert path.name in msg
    if line is not None:
        assert f":{line}:" in msg and exc.value.line == line
    if field is not None:
        assert f"'{field}'" in msg and exc.value.field == field
    assert "fix:" in msg


# ----------------------------------------------------------------------------------------------------------- corpus


def test_corpus_flashrag_and_title_text(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "c.jsonl", [
        {"id": "a", "contents": '"Alpha"\nfirst passage'},
        "",
        {"doc_id": 7, "title": "Beta", "text": "second"},
        {"_id": "c", "text": "no title"},
    ])
    ps = load_corpus(f)
    assert [p.id for p in ps] == ["a", "7", "c"]
    assert (ps[0].title, ps[0].text) == ("Alpha", "first passage")
    assert ps[1].contents == '"Beta"\nsecond'
    assert (ps[2].title, ps[2].text) == ("", "no title")


def test_corpus_gz_and_roundtrip(tmp_path: Path) -> None:
    ps = [Passage("x1", '"T"\nbody'), Passage.from_title_text("x2", "Ü", "ünïcode")]
    out = tmp_path / "sub" / "c.jsonl"
    assert write_corpus(ps, out) == 2
    assert load_corpus(out) == ps
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    gz = tmp_path / "c.jsonl.gz"
    write_corpus(ps, gz)
    assert gzip.open(gz, "rt").readline().startswith('{"id": "x1"')
    assert list(iter_corpus(gz)) == ps


@pytest.mark.parametrize(
    "bad, line, field",
    [
        ('{"id": "a", "contents": ', 2, None),  # bad JSON
        ('["a", "b"]', 2, None),  # not an object
        ({"contents": "x"}, 2, "id"),
        ({"id": "b"}, 2, "contents"),
        ({"id": "b", "contents": 5}, 2, "contents"),
        ({"id": "b", "title": 3, "text": "t"}, 2, "title"),
        ({"id": ["b"], "contents": "x"}, 2, "id"),
        ({"id": "a", "contents": "dup"}, 2, "id"),
    ],
)
def test_corpus_malformed(tmp_path: Path, bad, line: int, field: str | None) -> None:
    f = write_lines(tmp_path / "corpus.jsonl", [{"id": "a", "contents": "ok"}, bad])
    with pytest.raises(DataError) as exc:
        load_corpus(f)
    assert_error(exc, f, line, field)


def _gz_corpus(path: Path, n: int = 5000) -> bytes:
    with gzip.open(path, "wt") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p{i}", "contents": f'"T{i}"\nhello world {i} ' * 5}) + "\n")
    return path.read_bytes()


def test_corpus_truncated_or_corrupt_gzip(tmp_path: Path) -> None:
    """An interrupted download, a plain file named .gz, flipped bytes: a DataError naming the file, the line being
    read and the fix (not click's bare "Aborted." from an EOFError, nor a BadGzipFile / zlib traceback)."""
    full = _gz_corpus(tmp_path / "full.jsonl.gz")
    trunc = tmp_path / "trunc.jsonl.gz"
    trunc.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="truncated") as exc:
        load_corpus(trunc)
    assert_error(exc, trunc, exc.value.line, None)
    assert exc.value.line > 1
    plain = tmp_path / "plain.jsonl.gz"
    plain.write_text('{"id": "a", "contents": "x"}\n')
    with pytest.raises(DataError, match="not a gzip file") as exc:
        load_corpus(plain)
    assert_error(exc, plain, 1, None)
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(full[:200] + bytes(b ^ 0xFF for b in full[200:400]) + full[400:])
    with pytest.raises(DataError, match="gzip") as exc:
        load_corpus(bad)
    assert_error(exc, bad, exc.value.line, None)
    with pytest.raises(DataError, match="truncated"):
        load_qa(trunc.rename(tmp_path / "qa.jsonl.gz"))


def test_corpus_folder_is_not_file_not_found(tmp_path: Path) -> None:
    """`searche1 index --corpus FOLDER` said 'file not found' for a folder that exists."""
    write_lines(tmp_path / "corpus.jsonl", [{"id": "1", "contents": "x"}])
    with pytest.raises(DataError, match="is a folder, not a jsonl file") as exc:
        load_corpus(tmp_path)
    assert f"e.g. {tmp_path / 'corpus.jsonl'}" in str(exc.value)


def test_corpus_duplicate_mentions_first_line(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "c.jsonl", [{"id": 1, "contents": "a"}, "", {"id": "1", "contents": "b"}])
    with pytest.raises(DataError, match="first seen on line 1") as exc:
        load_corpus(f)
    assert_error(exc, f, 3, "id")


# --------------------------------------------------------------------------------------------------------------- QA


def sr1_row(i: int, q: str, target, source: str = "nq", **extra) -> dict:
    return {
        "data_source": source,
        "prompt": [{"role": "user", "content": SR1_PROMPT.format(q=q)}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": target}},
        "extra_info": {"split": "test", "index": i, **extra},
    }


def test_qa_flashrag(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "nq.jsonl", [
        {"id": "q1", "question": "who?", "golden_answers": ["Ann", "Anne"], "metadata": {"k": 1}},
        {"id": 2, "question": " where? ", "golden_answers": "Paris"},
        {"question": "when?", "answers": ["1999"]},
    ])
    exs = load_qa(f)
    assert exs[0] == QAExample("q1", "who?", ["Ann", "Anne"], "nq", {"k": 1})
    assert (exs[1].id, exs[1].question, exs[1].answers) == ("2", "where?", ["Paris"])
    assert exs[2].id == "nq-3" and exs[2].answers == ["1999"]
    assert [e.id for e in load_qa(f, limit=2)] == ["q1", "2"]
    assert {e.dataset for e in load_qa(f, dataset="custom")} == {"custom"}


def test_qa_searchr1_jsonl(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "train.jsonl", [
        sr1_row(0, "who got the first nobel prize in physics?", ["Wilhelm Conrad Röntgen"]),
        {**sr1_row(1, "ignored", ["x"], source="hotpotqa"), "question": "explicit question?"},
        {**sr1_row(2, "ignored", ["y"], question="from extra_info?"), "reward_model": {"ground_truth": "y"}},
    ])
    a, b, c = load_qa(f)
    assert (a.id, a.question, a.answers, a.dataset) == ("0", "who got the first nobel prize in physics?",
                                                        ["Wilhelm Conrad Röntgen"], "nq")
    assert a.metadata == {"split": "test", "index": 0}
    assert (b.question, b.dataset) == ("explicit question?", "hotpotqa")
    assert (c.question, c.answers) == ("from extra_info?", ["y"])


def test_qa_searchr1_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [sr1_row(i, f"question {i}?", [f"ans{i}", f"alt{i}"], source=s) for i, s in enumerate(["nq", "hotpotqa"])]
    f = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist(rows), f)
    exs = load_qa(f)
    assert [(e.id, e.question, e.answers, e.dataset) for e in exs] == [
        ("0", "question 0?", ["ans0", "alt0"], "nq"), ("1", "question 1?", ["ans1", "alt1"], "hotpotqa")]
    grouped = load_qa_files([f])
    assert sorted(grouped) == ["hotpotqa", "nq"]

    bad = tmp_path / "bad.parquet"
    rows[1]["reward_model"]["ground_truth"]["target"] = []
    pq.write_table(pa.Table.from_pylist(rows), bad)
    with pytest.raises(DataError) as exc:
        load_qa(bad)
    assert_error(exc, bad, 2, "reward_model.ground_truth.target")


def test_qa_numpy_answers(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    from searche1.data.qa import parse_row

    row = sr1_row(5, "q?", np.array(["a", "b"], dtype=object))
    row["prompt"] = np.array(row["prompt"], dtype=object)
    del row["extra_info"]["index"]
    ex = parse_row(row, tmp_path / "x.parquet", 3, None, "x")
    assert (ex.id, ex.question, ex.answers) == ("nq-3", "q?", ["a", "b"])


def test_qa_hf_folders(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    flash = [
        {"id": "a", "question": "q1?", "golden_answers": ["x"]},
        {"id": "b", "question": "q2?", "golden_answers": ["y", "z"]},
    ]
    d1 = tmp_path / "triviaqa"
    datasets.Dataset.from_list(flash).save_to_disk(str(d1))
    exs = load_qa(d1)
    assert [(e.id, e.answers, e.dataset) for e in exs] == [("a", ["x"], "triviaqa"), ("b", ["y", "z"], "triviaqa")]

    d2 = tmp_path / "sr1"
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([sr1_row(0, "train q?", ["t"])]),
        "test": datasets.Dataset.from_list([sr1_row(0, "test q?", ["u"], source="popqa")]),
    })
    dd.save_to_disk(str(d2))
    assert load_qa(d2, split="train")[0].question == "train q?"
    with pytest.raises(DataError, match="available") as exc:
        load_qa(d2, split="nope")
    assert_error(exc, d2, None, "split")
    with pytest.raises(DataError, match="available") as exc:
        load_qa(f"{d2}:nope")
    assert sorted(load_qa_files([d1, f"{d2}:test"])) == ["popqa", "triviaqa"]


def test_qa_hf_datasetdict_split_must_be_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A train+test DatasetDict given as a training file (train.py calls load_qa(f)) must never silently read
    test: with no split named it fails naming the splits and the ``FOLDER:train`` fix; the suffix picks the split."""
    datasets = pytest.importorskip("datasets")
    d = tmp_path / "sr1"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([sr1_row(i, f"train q{i}?", ["t"]) for i in range(3)]),
        "test": datasets.Dataset.from_list([sr1_row(0, "test q?", ["u"], source="popqa")]),
    }).save_to_disk(str(d))
    for call in (lambda: load_qa(d), lambda: load_qa_files([d])):
        with pytest.raises(DataError, match=r"several splits \['train', 'test'\]") as exc:
            call()
        assert_error(exc, d, None, "split")
        assert f"{d}:train" in str(exc.value)
    with caplog.at_level("INFO", logger="searche1.data.qa"):
        train = load_qa(f"{d}:train")
    assert [e.question for e in train] == ["train q0?", "train q1?", "train q2?"]
    assert {e.dataset for e in train} == {"nq"}
    assert "reading split 'train'" in caplog.text
    assert [e.question for e in load_qa(f"{d}:test")] == ["test q?"]
    assert load_qa(f"{d}:test", split="train")[0].question == "train q0?"  # split= wins over the suffix
    # one split: no name needed
    one = tmp_path / "one"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([sr1_row(0, "only q?", ["t"])])}).save_to_disk(str(one))
    assert [e.question for e in load_qa(one)] == ["only q?"]


def test_qa_hf_missing_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    d = tmp_path / "ds"
    d.mkdir()
    (d / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"searche1\[hf\]"):
        load_qa(d)


@pytest.mark.parametrize(
    "bad, field, match",
    [
        ('{"question": "q", ', None, "invalid JSON"),
        ('"just a string"', None, "JSON object"),
        ({"golden_answers": ["a"]}, "question", "missing"),
        ({"question": "", "golden_answers": ["a"]}, "question", "missing"),
        ({"question": 3, "golden_answers": ["a"]}, "question", "string"),
        ({"question": "q"}, "golden_answers", "missing answers"),
        ({"foo": 1}, None, "unrecognised QA format"),
        ({"id": "x", "query": "q", "output": "a"}, None, "accepted formats"),
        ({"question": "q", "golden_answers": []}, "golden_answers", "no answers"),
        ({"question": "q", "golden_answers": [""]}, "golden_answers", "no answers"),
        ({"question": "q", "golden_answers": None}, "golden_answers", "missing"),
        ({"question": "q", "golden_answers": [1984]}, "golden_answers", "must be strings"),
        ({"question": "q", "golden_answers": {"a": 1}}, "golden_answers", "list of strings"),
        ({"question": "q", "answer": 5}, "answer", "list of strings"),
        ({"question": "q", "golden_answers": ["a"], "metadata": [1]}, "metadata", "object"),
        ({"prompt": [{"role": "user", "content": ""}], "reward_model": {"ground_truth": {"target": ["a"]}}},
         "prompt", "missing"),
        ({"prompt": [{"role": "user", "content": "Question: q"}], "reward_model": {"ground_truth": {}}},
         "reward_model.ground_truth.target", "missing"),
    ],
)
def test_qa_malformed(tmp_path: Path, bad, field: str | None, match: str) -> None:
    f = write_lines(tmp_path / "dev.jsonl", [{"id": "1", "question": "ok?", "golden_answers": ["ok"]}, "", bad])
    with pytest.raises(DataError, match=match) as exc:
        load_qa(f)
    assert_error(exc, f, 3, field)


def test_qa_unrecognised_file_type(tmp_path: Path) -> None:
    f = tmp_path / "data.csv"
    f.write_text("question,answer\n")
    with pytest.raises(DataError, match="accepted formats") as exc:
        load_qa(f)
    assert_error(exc, f, None, None)
    with pytest.raises(DataError, match="not found"):
        load_qa(tmp_path / "missing.jsonl")


def test_qa_empty_file_is_an_error(tmp_path: Path) -> None:
    """An empty QA file was read as no questions: `data check` printed nothing and `eval` loaded the model and
    printed a table of nan."""
    f = tmp_path / "dev.jsonl"
    f.write_text("\n")
    with pytest.raises(DataError, match="holds no questions") as exc:
        load_qa(f)
    assert_error(exc, f, None, None)
    with pytest.raises(DataError, match="dev.jsonl: holds no questions"):
        load_qa_files([f])


@pytest.mark.parametrize("suffix, hint", [(".csv", "pd.read_csv('{src}').to_json('{dst}'"),
                                          (".json", "jq -c '.[]' {src} > {dst}")])
def test_qa_csv_or_json_array_gets_a_conversion_hint(tmp_path: Path, suffix: str, hint: str) -> None:
    f = tmp_path / f"dev{suffix}"
    f.write_text("question,answer\nwho?,x\n" if suffix == ".csv" else '[{"question": "who?", "answer": "x"}]')
    with pytest.raises(DataError, match="accepted formats") as exc:
        load_qa(f)
    assert hint.format(src=f, dst=tmp_path / "dev.jsonl") in str(exc.value)


def test_qa_files_given_twice_or_colliding(tmp_path: Path) -> None:
    """A file passed twice (or a folder and a file in it) doubled its questions in eval's n and average; two files
    of one name merged into one dataset with the same ids (compare keys questions by dataset and id)."""
    d = tmp_path / "dev"
    d.mkdir()
    f = write_lines(d / "nq.jsonl", [{"id": "1", "question": "a?", "golden_answers": ["x"]}])
    with pytest.raises(DataError, match="given twice") as exc:
        load_qa_files([f, tmp_path / "dev" / ".." / "dev" / "nq.jsonl"])
    assert_error(exc, f, None, None)
    with pytest.raises(DataError, match="given twice"):
        load_qa_files([d, f])
    (tmp_path / "test").mkdir()
    g = write_lines(tmp_path / "test" / "nq.jsonl", [{"question": "b?", "golden_answers": ["y"]},
                                                     {"id": "1", "question": "c?", "golden_answers": ["z"]}])
    with pytest.raises(DataError, match="question id '1' of dataset 'nq' is also in .*dev/nq.jsonl") as exc:
        load_qa_files([f, g])
    assert_error(exc, g, None, None)


def test_qa_files_folder_and_write(tmp_path: Path) -> None:
    d = tmp_path / "dev"
    d.mkdir()
    write_lines(d / "nq.jsonl", [{"id": "1", "question": "a?", "golden_answers": ["x"]}])
    write_lines(d / "hotpotqa.jsonl", [{"id": "2", "question": "b?", "golden_answers": ["y"]}])
    (d / "notes.txt").write_text("ignored")
    grouped = load_qa_files([d])
    assert sorted(grouped) == ["hotpotqa", "nq"] and grouped["nq"][0].question == "a?"
    with pytest.raises(DataError, match="not a Hugging Face"):
        load_qa(d)

    write_lines(tmp_path / "corpus.jsonl", [{"id": "d1", "contents": "\"T\"\ntext"}])
    with pytest.raises(DataError, match=f"is a data folder .*fix: pass {tmp_path / 'train'} for training"):
        load_qa_files([tmp_path])  # a searchqa-style folder: its corpus is not a QA file, say which subfolder

    out = tmp_path / "out" / "nq.jsonl"
    assert write_qa(grouped["nq"], out) == 1
    assert json.loads(out.read_text()) == {"id": "1", "question": "a?", "golden_answers": ["x"], "metadata": {}}
    assert load_qa(out) == grouped["nq"]


# ---------------------------------------------------------------------------------------------- shared searchqa data


@requires_searchqa
def test_real_searchqa() -> None:
    nq = load_qa(SEARCHQA / "dev" / "nq.jsonl")
    assert len(nq) == 155 and all(e.dataset == "nq" and e.answers for e in nq)
    dev = load_qa_files([SEARCHQA / "dev"])
    assert {"nq", "hotpotqa", "bamboogle"} <= dev.keys()
    hotpot = dev["hotpotqa"]
    corpus = load_corpus(SEARCHQA / "corpus.jsonl")
    assert len(corpus) == 24492 and corpus[0].title and corpus[0].text
    ids = {p.id for p in corpus}
    gold = [g for e in hotpot for g in e.metadata.get("gold_doc_ids", [])]
    assert gold and set(gold) <= ids
