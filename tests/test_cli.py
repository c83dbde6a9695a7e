"""The command line end to end on local files: synth → check → index → search → eval (tiny model)."""

import json

import pytest
from typer.testing import CliRunner

from searche1.cli import app

runner = CliRunner()


def flat(result) -> str:
    """The command's output on one line (rich wraps long error messages)."""
    return " ".join(result.output.split())


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


def test_search_needs_exactly_one_source(tmp_path):
    """The message named the config fields (`index`/`url`), not the options (search, and eval given both)."""
    r = runner.invoke(app, ["search", "x"])
    assert r.exit_code == 2 and "--index/--url: give exactly one" in flat(r)
    r = runner.invoke(app, ["search", "x", "--index", str(tmp_path), "--url", "http://127.0.0.1:9"])
    assert r.exit_code == 2 and "--index/--url: give exactly one" in flat(r)
    data = tmp_path / "dev.jsonl"
    data.write_text(json.dumps({"id": "1", "question": "q?", "golden_answers": ["a"]}) + "\n")
    r = runner.invoke(app, ["eval", "--model", "m", "--data", str(data), "--index", str(tmp_path),
                            "--retriever-url", "http://127.0.0.1:9"])
    assert r.exit_code == 2 and "--index/--retriever-url: modes agent and naive-rag need exactly one" in flat(r)


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


def _tiny_train_config(tmp_path):
    import yaml
    from test_train import make_config

    from searche1.config import to_dict

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(to_dict(make_config(tmp_path, steps=1))))
    return path


def test_train_refuses_a_folder_that_holds_no_run_or_another_kind(tmp_path):
    """--out (with or without --resume) pointing at a non-run folder (an index, a typo) trained into it."""
    cfg = _tiny_train_config(tmp_path)
    r = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(tmp_path / "index"), "--resume"])
    assert r.exit_code == 2 and "holds files but no searche1 run" in flat(r), flat(r)
    assert not (tmp_path / "index" / "config.json").exists()
    (tmp_path / "left").mkdir()  # only the check file of a multi-rank start that was killed: an empty folder
    (tmp_path / "left" / ".shared-check").write_text("0" * 32)
    from searche1.cli import _check_run_folder
    from searche1.config import load_config
    from searche1.pipeline import PipelineConfig

    _check_run_folder(tmp_path / "left", load_config(PipelineConfig, cfg, {}), False)  # does not raise
    (tmp_path / "pipe" / "phase-00-grpo").mkdir(parents=True)
    r = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(tmp_path / "pipe"), "--resume"])
    assert r.exit_code == 2 and "holds a pipeline run" in flat(r)
    (tmp_path / "grpo").mkdir()
    (tmp_path / "grpo" / "metrics.jsonl").write_text("")
    r = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(tmp_path / "grpo"), "--resume",
                            "--set", "schedule=[grpo, ofsd]"])
    assert r.exit_code == 2 and "holds a GRPO-only run" in flat(r)


def test_train_resume_with_a_changed_config_says_what_changed(tmp_path):
    """--resume with other settings silently overwrote the run's config.json."""
    cfg = _tiny_train_config(tmp_path)
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(run)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(run), "--resume",
                            "--set", "grpo.steps=2", "--set", "grpo.lr=0.01"])
    assert r.exit_code == 0, r.output
    assert "2 changed config field(s)" in flat(r) and "grpo.lr: 0.001 → 0.01; grpo.steps: 1 → 2" in flat(r)
    assert json.loads((run / "config.previous-1.json").read_text())["grpo"]["steps"] == 1
    assert json.loads((run / "config.json").read_text())["grpo"]["steps"] == 2
    r = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(run), "--resume",
                            "--set", "grpo.steps=2", "--set", "grpo.lr=0.01"])
    assert r.exit_code == 0 and "changed config" not in flat(r)


def test_train_interrupted_says_how_to_continue(tmp_path, monkeypatch):
    import searche1.train

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(searche1.train, "run_grpo", interrupted)
    r = runner.invoke(app, ["train", "--config", str(_tiny_train_config(tmp_path)), "--out", str(tmp_path / "r")])
    assert r.exit_code == 130 and "--resume continues" in flat(r)


def test_eval_bad_out_offset_or_server_fail_before_the_model_loads(tmp_path, monkeypatch):
    """--out FOLDER was a traceback after the whole evaluation; an --offset past every question printed a table of
    nan; a dead retrieval server was a traceback in naive-rag mode (and a silent run of failed searches in agent
    mode), each after the model had loaded."""
    import searche1.models

    def no_model(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(searche1.models, "load_policy", no_model)
    data = tmp_path / "dev.jsonl"
    data.write_text(json.dumps({"id": "1", "question": "q?", "golden_answers": ["a"]}) + "\n")
    base = ["eval", "--model", "m", "--data", str(data)]
    r = runner.invoke(app, base + ["--mode", "direct", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "is a folder" in flat(r) and "results.json" in flat(r)
    r = runner.invoke(app, base + ["--mode", "direct", "--offset", "1"])
    assert r.exit_code == 2 and "skips every question" in flat(r)
    r = runner.invoke(app, base + ["--mode", "naive-rag", "--retriever-url", "http://127.0.0.1:9"])
    assert r.exit_code == 2 and "unreachable" in flat(r), r.output


@pytest.mark.parametrize("args, needle", [
    (["eval", "--model", "m", "--data", "d.jsonl", "--batch-size", "0"], "--batch-size: must be >= 1"),
    (["eval", "--model", "m", "--data", "d.jsonl", "--mode", "foo"], "--mode: 'foo' is not one of"),
    (["eval", "--model", "m", "--data", "d.jsonl", "--max-turn-tokens", "0"], "--max-turn-tokens: must be >= 1"),
    (["warmup", "--model", "m", "--index", "i", "--data", "d.jsonl", "--out", "o", "--epochs", "0"],
     "--epochs: must be"),
])
def test_bad_option_values_name_the_option(args, needle):
    """eval and warmup validate their options as config fields: the error names the option, not the field."""
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and needle in flat(r), r.output


def test_compare_out_folder_is_a_clean_error(tmp_path):
    r = runner.invoke(app, ["compare", "a.json", "b.json", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "is a folder" in flat(r)


def test_serve_busy_port_or_bad_address_fails_before_loading(tmp_path):
    """A busy port was uvicorn's log line after 'serving ... on' (exit 3); --port 99999 an OverflowError traceback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = runner.invoke(app, ["serve", "--index", str(tmp_path / "no-index"), "--port", str(port)])
        assert r.exit_code == 2 and "Address already in use" in flat(r) and "--port" in flat(r)
    r = runner.invoke(app, ["serve", "--index", str(tmp_path), "--port", "99999"])
    assert r.exit_code == 2 and "0..65535" in flat(r)


def test_demo_help_names_where_the_data_comes_from():
    """The help said ../shared/data/searchqa; searche1.paths.searchqa_dir reads $SEARCHE1_SEARCHQA first."""
    r = runner.invoke(app, ["demo", "--help"])
    assert "SEARCHE1_SEARCHQA" in flat(r).replace("│ ", "").replace(" │", "")


def test_train_checks_retrieval_and_data_before_the_model_loads(tmp_path, monkeypatch):
    """A missing retrieval section, index, server or data file failed only after the model had loaded (and wrote
    --out/config.json); the retrieval message lacked its section ('index/url: ...')."""
    import searche1.models

    def no_model(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(searche1.models, "load_policy", no_model)
    cfg = _tiny_train_config(tmp_path)
    train = ["train", "--config", str(cfg), "--out", str(tmp_path / "run")]
    for sets, needle in [(["retrieval.index=null"], "retrieval.index/url: set exactly one"),
                         ([f"retrieval.index={tmp_path / 'nope'}"], "not a searche1 index"),
                         (["retrieval.index=null", "retrieval.url=http://127.0.0.1:9", "retrieval.retries=0"],
                          "unreachable"),
                         ([f"data.train=[{tmp_path / 'nope.jsonl'}]"], "nope.jsonl: file not found"),
                         ([f"data.dev=[{tmp_path / 'nope.jsonl'}]", "grpo.eval_every=1"], "nope.jsonl: file not"),
                         (["rollout.vllm_url=,"], "--set 'rollout.vllm_url=,': the value is not YAML")]:
        r = runner.invoke(app, train + [x for s in sets for x in ("--set", s)])
        assert r.exit_code == 2 and needle in flat(r), (sets, flat(r))
    assert not (tmp_path / "run").exists()


def test_serve_proxy_warns_when_the_upstream_is_down(monkeypatch):
    """A proxy of a server that is down started silently and answered every request with HTTP 500."""
    import searche1.retrieval.client
    import searche1.retrieval.server

    served = []
    monkeypatch.setattr(searche1.retrieval.server, "serve", lambda app, **kw: served.append(kw))
    monkeypatch.setattr(searche1.retrieval.client.RemoteRetriever, "_delay", lambda self, attempt: 0.0)
    r = runner.invoke(app, ["serve", "--upstream", "http://127.0.0.1:9", "--port", "0"])
    assert r.exit_code == 0 and served, r.output
    assert "the upstream does not answer now" in flat(r) and "unreachable" in flat(r)


def test_help_of_out_and_overwrite_matches_behaviour():
    """train --out listed only a GRPO run's files; --overwrite of index/data synth now replaces only its kind."""
    def text(*cmd):
        return flat(runner.invoke(app, [*cmd, "--help"])).replace("│ ", "").replace(" │", "")

    assert "pipeline.json" in text("train")
    assert "never another kind" in text("index") and "never another kind" in text("data", "synth")
