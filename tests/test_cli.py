"""The command line end to end on local files: synth → check → index → search → eval (tiny model)."""

import json

from typer.testing import CliRunner

from searche1.cli import app

runner = CliRunner()


def test_help_lists_every_subcommand():
    out = runner.invoke(app, ["--help"]).output
    for cmd in ("index", "serve", "search", "data", "model", "warmup", "eval", "demo"):
        assert cmd in out


def test_synth_check_index_search(tmp_path):
    world = tmp_path / "world"
    r = runner.invoke(app, ["data", "synth", "--seed", "3", "--out", str(world)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["data", "check", str(world / "dev")])
    assert r.exit_code == 0 and "synth_single" in r.output
    r = runner.invoke(app, ["index", "--corpus", str(world / "corpus.jsonl"), "--out", str(tmp_path / "idx")])
    assert r.exit_code == 0, r.output
    q = json.loads((world / "dev" / "synth_single.jsonl").read_text().splitlines()[0])
    r = runner.invoke(app, ["search", q["question"], "--index", str(tmp_path / "idx"), "--topk", "2"])
    assert r.exit_code == 0 and r.output.count("\n  ") == 2
    # refusing to overwrite, and a clear error for a bad kind
    r = runner.invoke(app, ["index", "--corpus", str(world / "corpus.jsonl"), "--out", str(tmp_path / "idx")])
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = runner.invoke(app, ["index", "--corpus", str(world / "corpus.jsonl"), "--out", str(tmp_path / "x"),
                            "--kind", "sparse"])
    assert r.exit_code == 2 and "bm25, dense" in r.output


def test_bad_data_file_names_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "question": "q", "golden_answers": ["a"]}\n{"id": "2", "question": "q"}\n')
    r = runner.invoke(app, ["data", "check", str(bad)])
    assert r.exit_code == 2
    assert "bad.jsonl:2" in r.output and "golden_answers" in r.output


def test_search_needs_exactly_one_source():
    r = runner.invoke(app, ["search", "x"])
    assert r.exit_code == 2 and "exactly one" in r.output


def test_eval_direct_with_a_local_model_folder(tmp_path):
    from tiny import tiny_model, tiny_tokenizer

    tok, model = tiny_tokenizer(), tiny_model()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    data = tmp_path / "tiny.jsonl"
    data.write_text(json.dumps({"id": "1", "question": "What is the capital of France?", "golden_answers": ["Paris"]})
                    + "\n")
    out = tmp_path / "res.json"
    r = runner.invoke(app, ["eval", "--model", str(tmp_path / "m"), "--data", str(data), "--mode", "direct",
                            "--max-turn-tokens", "6", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["datasets"]["tiny"]["n"] == 1 and "average" in res
    assert "| tiny | 1 |" in r.output
    r = runner.invoke(app, ["eval", "--model", str(tmp_path / "nope"), "--data", str(data), "--mode", "direct"])
    assert r.exit_code == 2 and "embedded model" in r.output


def test_serve_bad_limit_is_a_clean_error(tmp_path):
    from tiny import PASSAGES

    from searche1.retrieval.index import build_index

    build_index(PASSAGES, tmp_path / "idx", show_progress=False)
    r = runner.invoke(app, ["serve", "--index", str(tmp_path / "idx"), "--max-queries", "0"])
    assert r.exit_code == 2 and "max_queries" in r.output and "Traceback" not in r.output
