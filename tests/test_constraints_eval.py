"""Turn-start constraint, evaluation modes and the result/table shapes, on the tiny model."""

import json

import pytest
from tiny import QUESTIONS, tiny_model, tiny_retriever, tiny_tokenizer

from searche1 import protocol
from searche1.config import from_dict
from searche1.data.types import QAExample
from searche1.errors import ConfigError
from searche1.evaluate import EvalConfig, evaluate, markdown_table, score_episode
from searche1.rollout.constraints import TurnStartConstraint
from searche1.rollout.hf_engine import HFEngine
from searche1.rollout.types import Episode, RolloutConfig, StopReason


def _examples():
    return [QAExample(id=f"q{i}", question=q, answers=[a], dataset="tiny") for i, (q, a) in enumerate(QUESTIONS)]


def test_turn_start_constraint_allowed_sets():
    tok = tiny_tokenizer()
    c = TurnStartConstraint(tok)
    first = {tok.decode([i]).strip() for i in c.allowed("").tolist()}
    assert first and all(any(o.startswith(s) or s.startswith(o) for o in ("<search>", "<answer>", "<think>"))
                         for s in first)
    assert c.allowed("<search>") is None and c.allowed("hello") is None  # opener done / not at a turn start
    assert tok.eos_token_id not in c.allowed("").tolist()


def test_constrained_turns_open_with_a_tag_and_logprobs_stay_raw():
    import torch

    tok, model = tiny_tokenizer(), tiny_model()
    cfg = RolloutConfig(batch_size=4, max_turn_tokens=12, max_total_tokens=400, turn_start="constrained")
    eps = HFEngine(model, tok, tiny_retriever(), cfg).run(_examples()[:4], seed=1)
    for ep in eps:
        first_turn = tok.decode(ep.response_ids[:12]).lstrip()
        assert first_turn.startswith(("<search>", "<answer>", "<think>")), first_turn
        ids = torch.tensor([ep.prompt_ids + ep.response_ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits.float(), -1)[0]
        P = len(ep.prompt_ids)
        for t, (tid, m, rec) in enumerate(zip(ep.response_ids, ep.policy_mask, ep.logprobs)):
            if m:  # the unconstrained policy's log-prob, not the constrained sampler's
                assert abs(lp[P + t - 1, tid].item() - rec) < 1e-4


def test_score_episode_strict_for_agent_lenient_for_baselines():
    ep = Episode("1", "q", ["Paris"], [1], answer=None, stop_reason=StopReason.PARSE_ERROR)
    assert score_episode(ep, "agent", "Paris")[1:] == (0.0, 0.0)
    assert score_episode(ep, "direct", "Paris\nmore text")[1] == 1.0
    assert protocol.lenient_answer("<answer> the Paris </answer>") == "the Paris"


@pytest.mark.parametrize("mode", ["agent", "naive-rag", "direct"])
def test_evaluate_modes_shape(mode, tmp_path):
    tok, model = tiny_tokenizer(), tiny_model()
    data = {"a": _examples()[:3], "b": _examples()[3:5]}
    cfg = EvalConfig(mode=mode, batch_size=4, max_turn_tokens=8, limit=2)
    res = evaluate(model, tok, tiny_retriever() if mode != "direct" else None, data, cfg, progress=False,
                   samples_out=tmp_path / "s.jsonl")
    assert set(res["datasets"]) == {"a", "b"}
    for d in res["datasets"].values():
        assert d["n"] == 2 and {"em", "f1", "searches", "valid_format", "response_tokens", "stop_reasons"} <= set(d)
        assert sum(d["stop_reasons"].values()) == 2
    assert set(res["average"]) >= {"em", "f1"}
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 4
    json.dumps(res)
    table = markdown_table(res)
    assert table.count("\n") == 4 and "**average**" in table


def test_offset_selects_a_disjoint_slice(tmp_path):
    tok, model = tiny_tokenizer(), tiny_model()
    data = {"a": _examples()[:5]}
    ids = {}
    for name, kw in (("first", {"limit": 2}), ("rest", {"offset": 2, "limit": 2}), ("tail", {"offset": 4})):
        evaluate(model, tok, None, data, EvalConfig(mode="direct", batch_size=4, max_turn_tokens=4, **kw),
                 progress=False, samples_out=tmp_path / f"{name}.jsonl")
        ids[name] = [json.loads(line)["id"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    every = [e.id for e in _examples()[:5]]
    assert (ids["first"], ids["rest"], ids["tail"]) == (every[:2], every[2:4], every[4:])
    with pytest.raises(ConfigError, match="offset: must be >= 0"):
        from_dict(EvalConfig, {"offset": -1})
