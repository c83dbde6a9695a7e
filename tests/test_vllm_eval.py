"""Evaluation with a vLLM engine, without vLLM (tests/vllm_fakes.py): ``searche1 eval --engine vllm`` builds a
colocated engine on the model folder and loads no HF model; ``evaluate`` gives the same results through either
engine on the same scripted turns; a GRPO run on the vLLM engine evaluates its dev sets with that engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from searche1.cli import app
from searche1.evaluate import EvalConfig, evaluate
from searche1.rollout.hf_engine import HFEngine
from searche1.rollout.vllm_engine import VLLMEngine

from test_vllm_engine import ForceHook
from tiny import PASSAGES, tiny_model
from toy_retriever import OverlapRetriever
from vllm_fakes import FakeLLM, RandomLLM, examples
from vllm_fakes import fake_vllm, tok  # noqa: F401 (fixtures; fake_vllm is autouse)

runner = CliRunner()
QS = ["What is the capital of France?", "Capital of Germany?", "Who wrote Hamlet?"]
SCRIPTS = {
    QS[0]: [" <search> capital of France </search>", " <answer> Paris </answer>"],
    QS[1]: [" <think> easy </think> <answer> Bonn </answer>"],
    QS[2]: [" <search> Hamlet </search>", " <search> Shakespeare </search>", " <answer> Shakespeare </answer>"],
}
GOLD = ["Paris", "Berlin", "William Shakespeare"]


def qa_file(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": str(i), "question": q, "golden_answers": [a]}) + "\n"
                            for i, (q, a) in enumerate(zip(QS, GOLD))))
    return path


def test_evaluate_gives_the_same_results_through_either_engine(tok, tmp_path):
    cfg = EvalConfig(max_turn_tokens=20, max_searches=2, batch_size=3)
    data = {"toy": [e.__class__(e.id, e.question, [a], "toy") for e, a in zip(examples(QS), GOLD)]}
    hf = HFEngine(tiny_model(tok), tok, OverlapRetriever(), cfg.rollout(), logits_hook=ForceHook(tok, SCRIPTS))
    vl = VLLMEngine(FakeLLM(tok, SCRIPTS), tok, OverlapRetriever(), cfg.rollout())
    a = evaluate(None, tok, None, data, cfg, engine=hf, progress=False, samples_out=tmp_path / "hf.jsonl")
    b = evaluate(None, tok, None, data, cfg, engine=vl, progress=False, samples_out=tmp_path / "vllm.jsonl")
    for r in (a, b):
        r["settings"].pop("seconds")
    assert a == b
    assert (tmp_path / "hf.jsonl").read_text() == (tmp_path / "vllm.jsonl").read_text()
    d = a["datasets"]["toy"]
    assert d["em"] == 0.3333 and d["searches"] == 1.0  # Paris right; Bonn wrong; Shakespeare is not EM
    assert d["stop_reasons"] == {"answered": 3}


def test_eval_cli_with_the_vllm_engine(fake_vllm, tok, tmp_path, monkeypatch):
    from searche1.retrieval.index import build_index

    built: list[dict] = []
    fake = FakeLLM(tok, SCRIPTS)
    fake_vllm.LLM = lambda **kw: built.append(kw) or fake
    model = tmp_path / "m"
    tiny_model(tok).save_pretrained(model)
    tok.save_pretrained(model)
    build_index(PASSAGES, tmp_path / "idx", show_progress=False)

    def no_hf_model(*a, **k):
        raise AssertionError("the vLLM engine must not load an HF model")

    monkeypatch.setattr("searche1.models.load_policy", no_hf_model)
    out = tmp_path / "res.json"
    r = runner.invoke(app, ["eval", "--model", str(model), "--data", str(qa_file(tmp_path / "toy.jsonl")),
                            "--index", str(tmp_path / "idx"), "--engine", "vllm", "--max-searches", "2",
                            "--vllm-kwargs", '{"enforce_eager": true}', "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert len(built) == 1 and built[0]["model"] == str(model) and built[0]["enforce_eager"] is True
    assert built[0]["gpu_memory_utilization"] == 0.85 and built[0]["max_model_len"] == 2048
    res = json.loads(out.read_text())
    assert res["settings"]["engine"] == "vllm" and res["datasets"]["toy"]["em"] == 0.3333
    params = [sp for *_, sp in fake.requests]
    assert len(params) == 6  # 3 first turns, 2 second turns, Hamlet's third
    assert all(sp.temperature == 0.0 and sp.logprobs is None and sp.seed is None for sp in params)
    assert 2 in params[0].stop_token_ids  # EOS, from the folder's tokenizer / generation config


@pytest.mark.parametrize("args, message", [
    (["--engine", "vllm", "--turn-start", "constrained"], "--turn-start: "),
    (["--engine", "vllm-server"], "--vllm-url: engine vllm-server needs"),
    (["--engine", "sglang"], "'sglang' is not one of"),
    (["--engine", "vllm", "--vllm-kwargs", "{enforce_eager"], "--vllm-kwargs: not JSON"),
    (["--engine", "vllm", "--vllm-kwargs", "[1]"], "--vllm-kwargs: expected a mapping"),
    (["--engine", "vllm"], "pip install 'searche1[vllm]'"),  # rich markup must not eat [vllm]
])
def test_eval_engine_errors(args, message, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed: `import vllm` raises ImportError
    from tiny import tiny_tokenizer

    model = tmp_path / "m"
    tiny_model().save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    r = runner.invoke(app, ["eval", "--model", str(model), "--data", str(qa_file(tmp_path / "toy.jsonl")),
                            "--mode", "direct", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output


def test_grpo_dev_evals_decode_with_the_runs_vllm_engine(fake_vllm, tmp_path):
    """rollout.engine: vllm: the dev evaluations go through the run's colocated engine (greedy, no seeds, no
    log-probs), after the push of the weights they evaluate."""
    from test_train import make_config, parity_reward, weights

    from searche1.rollout import factory
    from searche1.train import run_grpo

    fake_vllm.LLM = lambda **kw: RandomLLM(vocab=550)
    cfg = make_config(tmp_path, steps=2, eval_every=2)
    cfg.rollout.engine = "vllm"
    cfg.data.dev, cfg.data.dev_limit = [tmp_path / "train.jsonl"], 2
    out = run_grpo(cfg, tmp_path / "run", progress=False, episode_reward=parity_reward)
    (llm,) = factory._COLOCATED.values()
    greedy = [i for i, ps in enumerate(llm.params) if ps[0].temperature == 0.0]
    assert greedy and all(sp.seed is None and sp.logprobs is None for i in greedy for sp in llm.params[i])
    assert all(sp.temperature == 1.0 for i, ps in enumerate(llm.params) if i not in greedy for sp in ps)
    # the generate calls in order: step-0 eval, step 1's rollout, step 2's rollout, step-2 eval
    kinds = ["push" if k == "push" else ("eval" if i in greedy else "gen")
             for k, i in zip((k for k, _ in llm.events), _generate_index(llm.events))]
    assert kinds[0] == "push" and kinds[-1] == "eval" and kinds[1] == "eval"
    last_push = [e for k, e in llm.events if k == "push"][-1]
    final = weights(sorted((out / "checkpoints").iterdir())[-1])
    assert all(torch.equal(last_push[k], final[k]) for k in final)  # the last eval saw the final weights
    for step in (0, 2):
        saved = json.loads((out / "evals" / f"step-{step}.json").read_text())
        assert saved["settings"]["engine"] == "vllm" and saved["datasets"]["train"]["n"] == 2


def _generate_index(events):
    """For each event, the index of its generate call (-1 for pushes)."""
    n = -1
    for k, _ in events:
        if k == "generate":
            n += 1
            yield n
        else:
            yield -1
