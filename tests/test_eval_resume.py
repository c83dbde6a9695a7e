"""An interrupted evaluation (`searche1 eval --out X.json`, Ctrl-C or a crash) keeps its finished datasets in
X.partial.jsonl; the same command again skips them and ends with the results of an uninterrupted run."""

from __future__ import annotations

import json

import pytest
from tiny import tiny_tokenizer

from searche1.data.types import QAExample
from searche1.evaluate import EvalConfig, evaluate, resume_key
from searche1.rollout.types import Episode, StopReason


class Answers:
    """An engine answering each question with its id's parity ("even" / "odd"); a call holding a question of dataset
    ``fail_on`` is interrupted. ``calls``: the datasets of each call's questions."""

    def __init__(self, tok, fail_on: str | None = None) -> None:
        self.tok, self.fail_on, self.asked, self.calls = tok, fail_on, [], []

    def run(self, exs, *, prompts=None, progress=None, **_):
        if any(e.dataset == self.fail_on for e in exs):
            raise KeyboardInterrupt
        self.asked += [e.dataset for e in exs]
        self.calls.append([e.dataset for e in exs])
        out = []
        for e in exs:
            ans = "even" if int(e.id) % 2 == 0 else "odd"
            out.append(Episode(example_id=e.id, question=e.question, answers=list(e.answers), dataset=e.dataset,
                               prompt_ids=[1], response_ids=self.tok.encode(f"<answer>{ans}</answer>"),
                               response_text=f"<answer>{ans}</answer>", answer=ans,
                               stop_reason=StopReason.ANSWERED))
        if progress:
            progress(len(exs))
        return out


def data() -> dict[str, list[QAExample]]:
    return {name: [QAExample(id=str(i), question=f"{name} {i}?", answers=["even"], dataset=name) for i in range(n)]
            for name, n in (("nq", 4), ("hotpotqa", 3), ("bamboogle", 2))}


def test_interrupted_eval_resumes_by_dataset(tmp_path):
    tok, cfg = tiny_tokenizer(), EvalConfig(mode="agent", batch_size=3)  # every dataset fills a call of its own
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    key = resume_key(model, cfg)
    samples = tmp_path / "r.samples.jsonl"
    partial = tmp_path / "r.partial.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate(None, tok, None, data(), cfg, engine=Answers(tok, fail_on="bamboogle"), samples_out=samples,
                 resume=key, progress=False)
    assert [json.loads(x)["dataset"] for x in partial.read_text().splitlines()] == ["nq", "hotpotqa"]
    with open(partial, "a") as f:
        f.write('{"key": "cut off')  # the line being written when it stopped
    again = Answers(tok)
    res = evaluate(None, tok, None, data(), cfg, engine=again, samples_out=samples, resume=key, progress=False)
    assert again.asked == ["bamboogle"] * 2 and res["settings"]["resumed_datasets"] == ["nq", "hotpotqa"]
    assert not partial.exists()
    clean = evaluate(None, tok, None, data(), cfg, engine=Answers(tok), samples_out=tmp_path / "c.samples.jsonl",
                     progress=False)
    assert res["datasets"] == clean["datasets"] and res["average"] == clean["average"]
    assert samples.read_text() == (tmp_path / "c.samples.jsonl").read_text()


def test_partial_results_of_another_model_or_setting_are_not_reused(tmp_path):
    tok, cfg = tiny_tokenizer(), EvalConfig(mode="agent", batch_size=3)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    samples = tmp_path / "r.samples.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate(None, tok, None, data(), cfg, engine=Answers(tok, fail_on="bamboogle"), samples_out=samples,
                 resume=resume_key(model, cfg), progress=False)
    assert len((tmp_path / "r.partial.jsonl").read_text().splitlines()) == 2  # nq and hotpotqa were kept
    for key in (resume_key(model, EvalConfig(mode="agent", limit=3)), resume_key(tmp_path / "other", cfg)):
        assert key != resume_key(model, cfg)
    again = Answers(tok)
    evaluate(None, tok, None, data(), EvalConfig(mode="agent", limit=3), engine=again, samples_out=samples,
             resume=resume_key(model, EvalConfig(mode="agent", limit=3)), progress=False)
    assert again.asked == ["nq"] * 3 + ["hotpotqa"] * 3 + ["bamboogle"] * 2  # everything decoded afresh


def test_small_datasets_share_a_call_and_are_saved_one_by_one(tmp_path):
    """Consecutive datasets join one engine call until it holds batch_size questions; the results, samples and
    per-dataset partial records are those of one call per dataset; an interrupted later call keeps the earlier
    call's datasets."""
    tok = tiny_tokenizer()
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    alone = Answers(tok)
    ref = evaluate(None, tok, None, data(), EvalConfig(mode="agent", batch_size=1), engine=alone,
                   samples_out=tmp_path / "a.samples.jsonl", progress=False)
    assert alone.calls == [["nq"] * 4, ["hotpotqa"] * 3, ["bamboogle"] * 2]
    cfg = EvalConfig(mode="agent", batch_size=5)
    packed = Answers(tok)
    res = evaluate(None, tok, None, data(), cfg, engine=packed, samples_out=tmp_path / "b.samples.jsonl",
                   progress=False)
    assert packed.calls == [["nq"] * 4 + ["hotpotqa"] * 3, ["bamboogle"] * 2]  # 4 < 5, 4 + 3 >= 5; the rest
    assert list(res["datasets"]) == list(ref["datasets"]) == ["nq", "hotpotqa", "bamboogle"]
    assert res["datasets"] == ref["datasets"] and res["average"] == ref["average"]
    assert (tmp_path / "b.samples.jsonl").read_text() == (tmp_path / "a.samples.jsonl").read_text()

    samples, partial = tmp_path / "r.samples.jsonl", tmp_path / "r.partial.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate(None, tok, None, data(), cfg, engine=Answers(tok, fail_on="bamboogle"), samples_out=samples,
                 resume=resume_key(model, cfg), progress=False)
    assert [json.loads(x)["dataset"] for x in partial.read_text().splitlines()] == ["nq", "hotpotqa"]
    again = Answers(tok)
    res = evaluate(None, tok, None, data(), cfg, engine=again, samples_out=samples, resume=resume_key(model, cfg),
                   progress=False)
    assert again.calls == [["bamboogle"] * 2] and res["settings"]["resumed_datasets"] == ["nq", "hotpotqa"]
    assert res["datasets"] == ref["datasets"] and samples.read_text() == (tmp_path / "a.samples.jsonl").read_text()
