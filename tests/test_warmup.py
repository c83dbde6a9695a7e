"""Format warm-up: demonstration structure, token layout identical to the rollout engine, policy-only loss,
multi-hop bridges, training reduces the loss, and run_warmup writes a loadable folder atomically."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from searche1 import protocol
from searche1.config import ConfigError, describe, from_dict
from searche1.data.synth import MULTIHOP, SINGLE, generate_world
from searche1.data.types import Passage, QAExample
from searche1.retrieval.base import Hit
from searche1.rollout.hf_engine import HFEngine
from searche1.rollout.types import RolloutConfig
from searche1.warmup import (
    IGNORE_INDEX,
    WarmupConfig,
    build_demonstrations,
    collate,
    run_warmup,
    sample_questions,
    train_warmup,
)
from tests.tiny import PASSAGES, QUESTIONS, spy_prefixes, tiny_model, tiny_retriever, tiny_tokenizer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run ~20x faster on one thread than on two when the 2-core machine is busy (OpenMP spinning)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _examples() -> list[QAExample]:
    return [QAExample(id=f"q{i}", question=q, answers=[a], dataset="tiny") for i, (q, a) in enumerate(QUESTIONS)]


def _response_text(tok, demo) -> str:
    return tok.decode(demo.response_ids, skip_special_tokens=True)


class DictRetriever:
    """Query -> passages, by exact query text; anything else retrieves the fallback passage."""

    def __init__(self, table: dict[str, list[Passage]], fallback: Passage) -> None:
        self.table, self.fallback = table, fallback
        self.passages = [p for ps in table.values() for p in ps] + [fallback]
        self.calls: list[list[str]] = []

    def search(self, queries: list[str], topk: int = 3) -> list[list[Hit]]:
        self.calls.append(list(queries))
        return [[Hit(p.id, p.contents) for p in self.table.get(q, [self.fallback])[:topk]] for q in queries]


class Recording:
    """Wraps a retriever and remembers the hits returned for each query."""

    def __init__(self, inner) -> None:
        self.inner, self.seen = inner, {}

    def search(self, queries: list[str], topk: int = 3) -> list[list[Hit]]:
        out = self.inner.search(queries, topk)
        self.seen.update(zip(queries, out))
        return out


# ------------------------------------------------------------------------------------------------ demonstrations


def test_single_hop_structure_and_masks():
    tok = tiny_tokenizer()
    demos = build_demonstrations(_examples(), tiny_retriever(), tok, RolloutConfig())
    assert demos.stats["questions"] == len(QUESTIONS)
    assert len(demos) == demos.stats["demos"] > 0
    for d in demos:
        kinds = [pol for _, pol in d.segments]
        assert kinds == [False, True, False, True]  # prompt, search turn, information, answer turn
        assert d.searches == 1 and d.queries == [d.question] and d.found
        search_text = tok.decode(d.segments[1][0])
        assert search_text == f" <search> {d.question} </search>"
        assert tok.decode(d.segments[2][0]).startswith("\n\n<information>")
        ans_ids = d.segments[3][0]
        assert ans_ids[-1] == tok.eos_token_id
        assert tok.decode(ans_ids[:-1]) == f" <answer> {d.answer} </answer>"
        assert d.answer in dict(QUESTIONS).values()
        # masks: exactly the policy segments carry labels
        assert len(d.input_ids) == len(d.policy_mask) == len(d.labels) == len(d)
        assert d.labels == [t if m else IGNORE_INDEX for t, m in zip(d.input_ids, d.policy_mask)]
        assert sum(d.policy_mask) == len(d.segments[1][0]) + len(d.segments[3][0])
        assert d.input_ids == d.prompt_ids + d.response_ids
        assert protocol.is_valid_format(_response_text(tok, d), max_searches=1)


def test_ids_equal_the_engine():
    tok = tiny_tokenizer()
    retriever = Recording(tiny_retriever())
    for cfg in (RolloutConfig(), RolloutConfig(max_doc_tokens=5, max_info_tokens=40, max_searches=2),
                RolloutConfig(chat=False, max_searches=1)):
        engine = HFEngine(tiny_model(tok), tok, retriever, cfg)
        demos = build_demonstrations(_examples(), retriever, tok, cfg, answer_unfound=True)
        assert len(demos) == len(QUESTIONS)
        for d in demos:
            hits = retriever.seen[d.question]  # the hits the demo was built from
            assert d.segments[0][0] == engine.prompt_ids(d.question)
            assert d.segments[2][0] == engine.info_ids(hits)
            assert tok.decode(d.segments[2][0]).endswith(protocol.INFO_CLOSE + "\n\n")  # the cap keeps the tag
        longest = max(len(d.segments[2][0]) for d in demos)
        assert longest == cfg.max_info_tokens if cfg.max_info_tokens == 40 else longest < cfg.max_info_tokens


def test_unfound_is_skipped_or_answered():
    tok = tiny_tokenizer()
    exs = _examples() + [QAExample(id="x", question="What colour is the sky on Mars?", answers=["butterscotch"])]
    skipped = build_demonstrations(exs, tiny_retriever(), tok, RolloutConfig())
    assert "x" not in {d.example_id for d in skipped}
    assert skipped.stats["skipped_unfound"] >= 1 and skipped.stats["answered_unfound"] == 0
    answered = build_demonstrations(exs, tiny_retriever(), tok, RolloutConfig(), answer_unfound=True)
    x = next(d for d in answered if d.example_id == "x")
    assert not x.found and x.answer == "butterscotch" and x.searches == 1
    assert answered.stats["answered_unfound"] >= 1 and answered.stats["skipped_unfound"] == 0
    assert protocol.extract_answer(_response_text(tok, x)) == "butterscotch"


def test_think_sentences_are_seeded_and_valid():
    tok = tiny_tokenizer()
    a = build_demonstrations(_examples(), tiny_retriever(), tok, RolloutConfig(), think_prob=0.5, seed=3)
    b = build_demonstrations(_examples(), tiny_retriever(), tok, RolloutConfig(), think_prob=0.5, seed=3)
    assert [d.input_ids for d in a] == [d.input_ids for d in b]
    always = build_demonstrations(_examples(), tiny_retriever(), tok, RolloutConfig(), think_prob=1.0)
    for d in always:
        text = _response_text(tok, d)
        assert text.count("<think>") == 2 and protocol.is_valid_format(text)
        assert protocol.search_queries(text) == [d.question]


def test_chain_bridge_gives_two_searches():
    tok = tiny_tokenizer()
    bridge = Passage.from_title_text("b1", "Zorvik Tallan", "Zorvik Tallan married Elsbeth Marn in 1901.")
    target = Passage.from_title_text("b2", "Elsbeth Marn", "Elsbeth Marn was born in the city of Quorth.")
    noise = Passage.from_title_text("n", "Noise", "Nothing useful here.")
    q = "In which city was the spouse of Zorvik Tallan born?"
    retriever = DictRetriever({q: [bridge], "Elsbeth Marn birthplace": [target]}, noise)
    ex = QAExample(id="m", question=q, answers=["Quorth"], dataset=MULTIHOP, metadata={"chain": [
        {"subject": "Zorvik Tallan", "relation": "spouse", "object": "Elsbeth Marn", "doc_id": "b1"},
        {"subject": "Elsbeth Marn", "relation": "birthplace", "object": "Quorth", "doc_id": "b2"}]})
    demos = build_demonstrations([ex], retriever, tok, RolloutConfig(), max_hops=2)
    (d,) = demos
    assert d.queries == [q, "Elsbeth Marn birthplace"] and d.answer == "Quorth"
    assert [pol for _, pol in d.segments] == [False, True, False, True, False, True]
    assert protocol.count_searches(_response_text(tok, d)) == 2
    assert demos.stats["multi_hop"] == 1
    assert retriever.calls == [[q], ["Elsbeth Marn birthplace"]]  # one batched call per hop
    # one hop only: the answer is never seen -> skipped
    assert len(build_demonstrations([ex], retriever, tok, RolloutConfig(), max_hops=1)) == 0
    # a bridge that is not visible in the retrieved text is never used
    blind = DictRetriever({q: [noise]}, noise)
    assert len(build_demonstrations([ex], blind, tok, RolloutConfig(), max_hops=2)) == 0
    assert blind.calls == [[q]]


def test_gold_doc_title_bridge():
    tok = tiny_tokenizer()
    film = Passage.from_title_text("h1", "Big Stone Gap (film)", "The film was directed by Adriana Trigiani.")
    person = Passage.from_title_text("h2", "Adriana Trigiani", "Adriana Trigiani is a writer based in Greenwich "
                                                                "Village, New York City.")
    noise = Passage.from_title_text("n", "Noise", "Nothing useful here.")
    q = 'The director of "Big Stone Gap" is based in what New York city?'
    retriever = DictRetriever({q: [film, noise], "Adriana Trigiani": [person]}, noise)
    ex = QAExample(id="h", question=q, answers=["Greenwich Village, New York City", "Greenwich Village"],
                   dataset="hotpotqa", metadata={"gold_doc_ids": ["h1", "h2"]})
    (d,) = build_demonstrations([ex], retriever, tok, RolloutConfig())
    assert d.queries == [q, "Adriana Trigiani"]
    assert d.answer == "Greenwich Village, New York City"


def test_synthetic_world_multi_hop():
    from searche1.retrieval.bm25 import BM25Retriever

    tok = tiny_tokenizer()
    world = generate_world(seed=0, n_people=12, n_train=12, n_dev=2)
    retriever = BM25Retriever.build(world.passages, show_progress=False)
    exs = world.questions[MULTIHOP] + world.questions[SINGLE]
    demos = build_demonstrations(exs, retriever, tok, RolloutConfig(), max_hops=3)
    assert demos.stats["multi_hop"] >= 3
    assert demos.stats["demos"] + demos.stats["skipped_unfound"] == len(exs)
    for d in demos:
        text = _response_text(tok, d)
        assert protocol.is_valid_format(text, max_searches=3)
        assert protocol.search_queries(text) == d.queries
        assert protocol.extract_answer(text) == d.answer


# ------------------------------------------------------------------------------------------------------ training


def test_collate_pads_right_and_masks_labels():
    tok = tiny_tokenizer()
    demos = build_demonstrations(_examples()[:3], tiny_retriever(), tok, RolloutConfig())
    ids, attn, labels = collate(demos, tok.pad_token_id)
    assert ids.shape == attn.shape == labels.shape == (3, max(len(d) for d in demos))
    for r, d in enumerate(demos):
        n = len(d)
        assert ids[r, :n].tolist() == d.input_ids and attn[r, :n].all() and not attn[r, n:].any()
        assert (ids[r, n:] == tok.pad_token_id).all() and (labels[r, n:] == IGNORE_INDEX).all()
        assert ((labels[r] != IGNORE_INDEX).nonzero()[:, 0].tolist()
                == [i for i, m in enumerate(d.policy_mask) if m])


def _policy_loss(model, tok, demos) -> float:
    ids, attn, labels = collate(demos, tok.pad_token_id)
    with torch.no_grad():
        return float(model(input_ids=ids, attention_mask=attn, labels=labels).loss)


def test_training_reduces_policy_loss():
    tok = tiny_tokenizer()
    demos = build_demonstrations(_examples(), tiny_retriever(), tok, RolloutConfig(max_doc_tokens=16))
    model = tiny_model(tok)
    before = _policy_loss(model, tok, demos)
    cfg = WarmupConfig(epochs=6, batch_size=3, lr=3e-3, warmup_ratio=0.1, bf16="off")
    metrics = train_warmup(model, tok, demos, cfg, progress=False)
    after = _policy_loss(model, tok, demos)
    assert after < before - 0.5
    assert metrics["warmup/steps"] == 6 * 2 == len(metrics["warmup/losses"])
    assert metrics["warmup/loss_last"] < metrics["warmup/loss_first"]
    assert metrics["warmup/policy_tokens"] == 6 * sum(sum(d.policy_mask) for d in demos)
    assert metrics["warmup/tokens"] == 6 * sum(len(d) for d in demos)
    assert metrics["warmup/bf16"] is False and metrics["warmup/tokens_per_s"] > 0
    assert not model.training  # mode restored


def test_shared_instructions_give_the_same_training(monkeypatch):
    """share_prompt (the instructions a batch's prompts share run once, searche1.scoring) changes no loss or
    weight: the same demonstrations trained with it on and off give the same losses and weights."""
    import searche1.scoring

    tok = tiny_tokenizer()
    demos = build_demonstrations(_examples(), tiny_retriever(), tok, RolloutConfig(max_doc_tokens=16))
    prefixes = spy_prefixes(monkeypatch, searche1.scoring)
    runs = {}
    for share in (True, False):
        prefixes.clear()
        model = tiny_model(tok)
        cfg = WarmupConfig(epochs=2, batch_size=3, lr=3e-3, bf16="off", share_prompt=share)
        runs[share] = (train_warmup(model, tok, demos, cfg, progress=False), model.state_dict())
        if share:  # it did share: every batch of 2+ demonstrations runs its instructions once
            assert len(prefixes) == 4 and all(p >= 16 for p in prefixes)
            assert all(p < len(d.prompt_ids) for p in prefixes for d in demos)
        else:
            assert prefixes == [0] * 4
    (ma, wa), (mb, wb) = runs[True], runs[False]
    assert ma["warmup/losses"] == pytest.approx(mb["warmup/losses"], rel=1e-4, abs=1e-6)
    for k in wa:  # (AdamW turns gradient noise of ~1e-10 into updates of ~1e-6 at lr 3e-3)
        assert torch.allclose(wa[k], wb[k], rtol=1e-5, atol=1e-5), k


def test_loss_ignores_information_tokens():
    """Changing retrieved-token labels cannot matter: only policy positions are labelled."""
    tok = tiny_tokenizer()
    (d,) = build_demonstrations(_examples()[:1], tiny_retriever(), tok, RolloutConfig())
    model = tiny_model(tok)
    ids, attn, labels = collate([d], tok.pad_token_id)
    logits = model(input_ids=ids, attention_mask=attn).logits[0, :-1].float()  # (T-1, V)
    target = ids[0, 1:]
    mask = torch.tensor(d.policy_mask[1:], dtype=torch.bool)
    manual = torch.nn.functional.cross_entropy(logits[mask], target[mask])
    assert torch.allclose(manual, model(input_ids=ids, attention_mask=attn, labels=labels).loss, atol=1e-5)


def test_too_long_demos_are_dropped():
    tok = tiny_tokenizer()
    demos = build_demonstrations(_examples(), tiny_retriever(), tok, RolloutConfig())
    cut = sorted(len(d) for d in demos)[len(demos) // 2]
    m = train_warmup(tiny_model(tok), tok, demos, WarmupConfig(max_len=cut, bf16="off"), progress=False)
    assert m["warmup/demos_used"] == sum(len(d) <= cut for d in demos)
    assert m["warmup/skipped_too_long"] == len(demos) - m["warmup/demos_used"] > 0
    with pytest.raises(ValueError, match="max_len"):
        train_warmup(tiny_model(tok), tok, demos, WarmupConfig(max_len=5), progress=False)


def test_config_from_dict_and_help():
    cfg = from_dict(WarmupConfig, {"bf16": "on", "lr": "1e-4", "think_prob": 0.2})
    assert cfg.bf16 == "on" and cfg.lr == 1e-4
    with pytest.raises(ConfigError, match="bf16"):
        from_dict(WarmupConfig, {"bf16": "maybe"})
    with pytest.raises(ConfigError, match="think_prob"):
        from_dict(WarmupConfig, {"think_prob": 2.0})
    assert all(help_ for *_, help_ in describe(WarmupConfig))
    d = WarmupConfig()
    assert (d.num_examples, d.epochs, d.batch_size, d.lr, d.max_len, d.max_hops, d.think_prob, d.answer_unfound) == (
        240, 1, 4, 5e-5, 768, 2, 0.0, False)


# ------------------------------------------------------------------------------------------------------- driver


def _write_qa(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sample_questions_is_balanced_and_seeded(tmp_path):
    a = _write_qa(tmp_path / "a.jsonl", [{"id": f"a{i}", "question": f"qa {i}", "golden_answers": ["x"]}
                                         for i in range(10)])
    b = _write_qa(tmp_path / "b.jsonl", [{"id": f"b{i}", "question": f"qb {i}", "golden_answers": ["x"]}
                                         for i in range(3)])
    got = sample_questions([a, b], 6, seed=1)
    assert [e.dataset for e in got] == ["a", "b"] * 3
    assert [e.id for e in got] == [e.id for e in sample_questions([a, b], 6, seed=1)]
    assert [e.id for e in got] != [e.id for e in sample_questions([a, b], 6, seed=2)]
    assert len(sample_questions([a, b], None)) == 13


@pytest.fixture
def model_dir(tmp_path):
    tok = tiny_tokenizer()
    path = tmp_path / "tiny-model"
    tiny_model(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_run_warmup_writes_loadable_folder(tmp_path, model_dir):
    from searche1.models import ModelConfig, load_policy
    from searche1.retrieval.index import build_index

    index = build_index(PASSAGES, tmp_path / "index", show_progress=False)
    rows = [{"id": f"t{i}", "question": q, "golden_answers": [a]} for i, (q, a) in enumerate(QUESTIONS)]
    rows.append({"id": "nope", "question": "What colour is the sky on Mars?", "golden_answers": ["butterscotch"]})
    qa = _write_qa(tmp_path / "train.jsonl", rows)
    out = tmp_path / "warm"
    cfg = WarmupConfig(num_examples=4, batch_size=2, bf16="off", device="cpu")
    assert run_warmup(model_dir, index, [qa], out, cfg, progress=False) == out
    assert {p.name for p in tmp_path.iterdir() if p.name.startswith(".")} == set()  # no temp folder left
    record = json.loads((out / "warmup.json").read_text())
    assert record["demos"]["used"] == 4 and record["metrics"]["warmup/steps"] == 2
    assert record["config"] == dataclasses.asdict(cfg)
    assert "<search>" in record["example"]["response"]
    model, tok = load_policy(ModelConfig(name_or_path=str(out), device="cpu"))
    assert (out / "model.safetensors").is_file() and tok.chat_template == tiny_tokenizer().chat_template
    trained = dict(model.named_parameters())
    base, _ = load_policy(ModelConfig(name_or_path=str(model_dir), device="cpu"))
    assert any(not torch.equal(p, trained[n]) for n, p in base.named_parameters())

    # an existing folder is refused before any work, unless overwrite
    with pytest.raises(FileExistsError):
        run_warmup(model_dir, index, [qa], out, cfg, progress=False)
    run_warmup(model_dir, index, [qa], out, dataclasses.replace(cfg, num_examples=2), overwrite=True,
               progress=False)
    assert json.loads((out / "warmup.json").read_text())["demos"]["used"] == 2
    # --overwrite replaces only a warm-up: a training run is refused before any work (no index is even opened)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(FileExistsError, match="no warmup.json"):
        run_warmup(model_dir, tmp_path / "no-index", [qa], run, cfg, overwrite=True, progress=False)
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]


def test_run_warmup_failure_leaves_nothing(tmp_path, model_dir, monkeypatch):
    import searche1.io

    qa = _write_qa(tmp_path / "train.jsonl", [{"id": f"t{i}", "question": q, "golden_answers": [a]}
                                               for i, (q, a) in enumerate(QUESTIONS)])

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(searche1.io, "write_json", boom)
    out = tmp_path / "warm"
    with pytest.raises(OSError, match="disk full"):
        run_warmup(model_dir, tiny_retriever(), [qa], out, WarmupConfig(num_examples=2, bf16="off"),
                   progress=False)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
