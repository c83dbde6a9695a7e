"""HFEngine: batched multi-turn episodes on a tiny random Llama with a tiny BPE tokenizer (no downloads).

What is checked:

* free sampling: stop reasons, aligned per-token lists, seed reproducibility, budgets;
* the sampler log-probs equal a re-scoring forward pass over the unpadded prompt + response (fp32), for free and
  scripted multi-turn batches whose rows differ in prompt length, turn lengths and stop turns, so left padding,
  mid-sequence padding, chunked info prefill and cache row removal are all exercised;
* greedy decoding is padding-invariant (alone == inside a mixed batch);
* a scripted policy (``logits_hook``) drives every stop reason: answered, max_turns, max_tokens (turn and total
  budgets), parse_error, retrieval_error (only the failing episode), and the information block's content, policy mask
  and truncation.
"""

from __future__ import annotations

import pytest
import torch

from searche1 import protocol
from searche1.config import ConfigError
from searche1.data.types import QAExample
from searche1.retrieval.base import Hit
from searche1.rollout.hf_engine import HFEngine
from searche1.rollout.types import Episode, RolloutConfig, StopReason
from tiny import QUESTIONS, tiny_model, tiny_retriever, tiny_tokenizer

FREE_QUESTIONS = [
    "What is the capital of France?",
    "Who wrote Hamlet?",
    "Which river flows north into the Mediterranean Sea, and through which countries does it pass?",
    "What is the highest mountain on Earth?",
    "Boiling point of water?",
]


# --------------------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls gain nothing from threads, and on a busy CPU OpenMP spinning makes them ~100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok, seed=0)


def make_examples(questions: list[str], prefix: str = "q") -> list[QAExample]:
    return [QAExample(id=f"{prefix}{i}", question=q, answers=["x"], dataset="tiny") for i, q in enumerate(questions)]


def encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def rescore(model, ep: Episode, temperature: float = 1.0) -> torch.Tensor:
    """Log-prob of every response token under one unpadded fp32 forward pass over prompt + response."""
    ids = torch.tensor([ep.prompt_ids + ep.response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    lp = torch.log_softmax(logits / temperature, -1)
    P = len(ep.prompt_ids)
    return lp[P - 1 : -1].gather(-1, ids[0, P:, None])[:, 0]


def assert_well_formed(ep: Episode) -> None:
    assert isinstance(ep.stop_reason, StopReason), ep
    assert len(ep.response_ids) == len(ep.policy_mask) == len(ep.logprobs)
    assert set(ep.policy_mask) <= {0, 1}
    assert all(lp == 0.0 for lp, m in zip(ep.logprobs, ep.policy_mask) if m == 0)
    assert all(lp <= 0.0 for lp in ep.logprobs)


def assert_logprobs_match(model, eps: list[Episode], temperature: float = 1.0, atol: float = 1e-4) -> None:
    for ep in eps:
        assert_well_formed(ep)
        mask = torch.tensor(ep.policy_mask, dtype=torch.bool)
        got = torch.tensor(ep.logprobs)
        ref = rescore(model, ep, temperature)
        assert mask.any()
        err = (got[mask] - ref[mask]).abs().max().item()
        assert err < atol, f"{ep.example_id}: max |sampler - rescored| log-prob = {err:.2e}"


def spans(ep: Episode) -> list[tuple[int, list[int]]]:
    """Runs of equal policy mask: [(mask, ids), ...]."""
    out: list[tuple[int, list[int]]] = []
    for t, m in zip(ep.response_ids, ep.policy_mask):
        if out and out[-1][0] == m:
            out[-1][1].append(t)
        else:
            out.append((m, [t]))
    return out


class Script:
    """A ``logits_hook`` forcing, per example id, a scripted sequence of turns.

    ``scripts[example_id]`` is a list of turn texts (may contain ``<|im_end|>``). In turn k the row is forced to emit
    the tokens of turn text k, then ``filler`` forever (a turn that never closes a tag). Examples without a script,
    and turns past the end of a script, are left free (the raw logits pass through).
    """

    def __init__(self, tok, scripts: dict[str, list[str]], filler: str = " the") -> None:
        self.turns = {k: [encode(tok, t) for t in v] for k, v in scripts.items()}
        self.filler = encode(tok, filler)[-1]
        self.calls = 0

    def __call__(self, rows: list[tuple[Episode, list[int]]], logits: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        assert logits.ndim == 2 and logits.shape[0] == len(rows)
        out = logits.clone()
        for b, (ep, turn_tokens) in enumerate(rows):
            turns = self.turns.get(ep.example_id, [])
            if ep.turns >= len(turns):
                continue  # free
            turn = turns[ep.turns]
            t = turn[len(turn_tokens)] if len(turn_tokens) < len(turn) else self.filler
            out[b] = float("-inf")
            out[b, t] = 0.0
        return out


class BoomRetriever:
    """Wraps a retriever; any batch holding a query with 'boom' fails (so the engine retries one by one)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []

    def search(self, queries: list[str], topk: int = 3) -> list[list[Hit]]:
        self.calls.append(list(queries))
        if any("boom" in q for q in queries):
            raise RuntimeError("index exploded")
        return self.inner.search(queries, topk)


def engine(model, tok, retriever=None, hook=None, **cfg) -> HFEngine:
    c = RolloutConfig(**{"max_turn_tokens": 24, "max_total_tokens": 1024, **cfg})
    c.validate()
    return HFEngine(model, tok, retriever or tiny_retriever(), c, logits_hook=hook)


# ---------------------------------------------------------------------------------------------------- tiny fixtures


def test_tiny_fixtures(tok, model):
    assert 400 <= len(tok) <= 800
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == ("<|pad|>", "<|im_end|>", "<|im_start|>")
    prompt = protocol.build_prompt("What is the capital of France?", tok)
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    text = " <search> capital of France </search>"
    assert tok.decode(encode(tok, text)) == text
    assert model.config.vocab_size == len(tok) and next(model.parameters()).dtype == torch.float32
    hits = tiny_retriever().search(["capital of France"], 1)[0]
    assert hits[0].title == "Paris"


# --------------------------------------------------------------------------------------------------- free sampling


def test_free_sampling_well_formed_and_reproducible(model, tok):
    eng = engine(model, tok, batch_size=3)  # 5 examples -> batches of 3 and 2
    exs = make_examples(FREE_QUESTIONS)
    a = eng.run(exs, seed=123)
    b = eng.run(exs, seed=123)
    c = eng.run(exs, seed=7)
    assert [e.example_id for e in a] == [e.id for e in exs]
    for ep in a:
        assert_well_formed(ep)
        assert ep.stop_reason in (StopReason.MAX_TOKENS, StopReason.PARSE_ERROR)  # a random model never closes a tag
        assert all(m == 1 for m in ep.policy_mask) and ep.searches == 0 and ep.answer is None
        assert ep.response_text == tok.decode(ep.response_ids)
        assert ep.prompt_ids == encode(tok, protocol.build_prompt(ep.question, tok))
        assert 1 <= len(ep.response_ids) <= 24
    assert [(e.response_ids, e.logprobs, e.stop_reason) for e in a] == [(e.response_ids, e.logprobs, e.stop_reason)
                                                                        for e in b]
    assert [e.response_ids for e in a] != [e.response_ids for e in c]


def test_sampled_episode_does_not_depend_on_batch_or_split(model, tok):
    """Per-episode generators: the same seed gives each episode the same tokens whatever the batch size, and a
    run split in two (as over two data-parallel ranks, with ``first_index``) equals the whole run."""
    exs = make_examples(FREE_QUESTIONS[:4])
    whole = engine(model, tok, batch_size=4).run(exs, seed=5)
    small = engine(model, tok, batch_size=1).run(exs, seed=5)
    split = engine(model, tok, batch_size=2).run(exs[:2], seed=5) + \
        engine(model, tok, batch_size=2).run(exs[2:], seed=5, first_index=2)
    for other in (small, split):
        assert [e.response_ids for e in other] == [e.response_ids for e in whole]
    assert len({tuple(e.response_ids) for e in whole}) > 1


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_free_sampling_logprobs_match_rescoring(model, tok, temperature, top_p):
    # a hook that favours EOS makes rows end their turn at different steps (mid-sequence pads); recorded log-probs
    # are still those of the unconstrained policy
    def eos_bias(rows, logits):
        logits[:, tok.eos_token_id] += 4.0
        return logits

    eng = engine(model, tok, hook=eos_bias, batch_size=8, temperature=temperature, top_p=top_p)
    eps = eng.run(make_examples(FREE_QUESTIONS), seed=0)
    assert len({len(e.response_ids) for e in eps}) > 1  # different lengths in one batch
    assert any(e.stop_reason == StopReason.PARSE_ERROR for e in eps)
    assert_logprobs_match(model, eps, temperature)


def test_free_sampling_without_hook_logprobs_match(model, tok):
    eps = engine(model, tok, batch_size=8).run(make_examples(FREE_QUESTIONS), seed=1)
    assert_logprobs_match(model, eps)


def test_greedy_is_padding_invariant(model, tok):
    exs = make_examples(FREE_QUESTIONS[:4])
    batched = engine(model, tok, greedy=True, batch_size=4).run(exs)
    for i, ex in enumerate(exs):
        alone = engine(model, tok, greedy=True, batch_size=1).run([ex])[0]
        assert alone.response_ids == batched[i].response_ids
        assert alone.stop_reason == batched[i].stop_reason
        assert torch.allclose(torch.tensor(alone.logprobs), torch.tensor(batched[i].logprobs), atol=1e-5)
    assert_logprobs_match(model, batched)


def test_shared_prefix_len():
    from searche1.scoring import MIN_SHARED_PREFIX as M, shared_prefix_len

    base = list(range(100, 100 + M + 4))
    assert shared_prefix_len([base]) == 0  # one row: nothing to share
    assert shared_prefix_len([base + [1, 2], base + [3]]) == M + 4
    assert shared_prefix_len([base, base, base]) == M + 3  # identical prompts: each row keeps its last token
    assert shared_prefix_len([base + [1], base[:M] + [7, 8]]) == M
    assert shared_prefix_len([base + [1], base[:M - 1] + [7, 8]]) == 0  # too short to be worth a prefill
    assert shared_prefix_len([[5] + base, base]) == 0


@pytest.mark.parametrize("shape", ["distinct", "one group", "groups"])
def test_shared_prefix_prefill_gives_the_full_prefill_episodes(model, tok, shape):
    """``shared_prefix`` only changes how the prompts' cache is computed: the same tokens, log-probs within float
    rounding, and sampler log-probs that still match a re-scoring pass. Shapes: distinct questions (the shared
    prefix); G copies of one question (one prompt prefilled, its rows copied); two GRPO groups (both)."""
    from searche1.scoring import shared_prefix_len
    from searche1.rollout.tokens import prompt_batch

    qs = {"distinct": FREE_QUESTIONS, "one group": [FREE_QUESTIONS[2]] * 4,
          "groups": [FREE_QUESTIONS[1]] * 3 + [FREE_QUESTIONS[2]] * 3}[shape]
    exs = make_examples(qs)
    prompts = prompt_batch(tok, list(dict.fromkeys(qs)), RolloutConfig())
    assert shared_prefix_len(prompts) >= 16 or len(prompts) == 1  # the path is really taken
    on = engine(model, tok, batch_size=8, temperature=0.8).run(exs, seed=4)
    off = engine(model, tok, batch_size=8, temperature=0.8, shared_prefix=False).run(exs, seed=4)
    assert [e.response_ids for e in on] == [e.response_ids for e in off]
    for a, b in zip(on, off):
        assert a.prompt_ids == b.prompt_ids and a.stop_reason == b.stop_reason
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)
    assert_logprobs_match(model, on, temperature=0.8)


def test_greedy_after_search_is_padding_invariant(model, tok):
    """q0 searches (short turn), then decodes freely; its batch mates have longer turns, other search counts and
    stop turns, so q0's row holds mid-sequence pads, a chunk-padded info block and survives row removal."""
    exs = make_examples(FREE_QUESTIONS[:4])
    scripts = {
        "q0": [" <search> capital of France </search>"],
        "q1": [" <think> Hamlet is a play by William Shakespeare </think> <answer> Shakespeare </answer>"],
        "q2": [" I should look this up. <search> Nile river </search>", " <search> Mediterranean Sea </search>",
               " <answer> Nile </answer>"],
        "q3": [" <search> highest mountain on Earth </search>", " <answer> Everest </answer>"],
    }
    batched = engine(model, tok, hook=Script(tok, scripts), greedy=True, batch_size=4).run(exs)
    alone = engine(model, tok, hook=Script(tok, scripts), greedy=True, batch_size=1).run(exs[:1])[0]
    assert batched[0].searches == 1 and len(spans(batched[0])) == 3  # search turn, info, free turn
    assert alone.response_ids == batched[0].response_ids
    assert torch.allclose(torch.tensor(alone.logprobs), torch.tensor(batched[0].logprobs), atol=1e-5)
    assert_logprobs_match(model, batched)


# --------------------------------------------------------------------------------------------- scripted episodes


def test_scripted_search_then_answer(model, tok):
    turns = [" <search> capital of France </search>", " <answer> Paris </answer>"]
    hook = Script(tok, {"q0": turns})
    eng = engine(model, tok, hook=hook)
    (ep,) = eng.run(make_examples(["What is the capital of France?"]), seed=0)
    assert hook.calls > 0
    assert ep.stop_reason == StopReason.ANSWERED
    assert ep.searches == 1 and ep.queries == ["capital of France"] and ep.turns == 2
    assert ep.answer == "Paris"
    # response = turn 1 (policy) + information block (inserted) + turn 2 (policy)
    info = eng.info_ids(tiny_retriever().search(["capital of France"], eng.cfg.topk)[0])
    parts = spans(ep)
    assert [m for m, _ in parts] == [1, 0, 1]
    assert parts[0][1] == encode(tok, turns[0]) and parts[1][1] == info and parts[2][1] == encode(tok, turns[1])
    info_lps = [lp for lp, m in zip(ep.logprobs, ep.policy_mask) if m == 0]
    assert len(info_lps) == len(info) and all(lp == 0.0 for lp in info_lps)
    text = tok.decode(parts[1][1])
    assert text.startswith("\n\n<information>") and text.endswith("</information>\n\n")
    assert "Paris is the capital and largest city of France" in ep.response_text
    assert ep.response_text == turns[0] + text + turns[1]
    assert protocol.is_valid_format(ep.response_text)
    assert_logprobs_match(model, [ep])


def test_scripted_mixed_batch(model, tok):
    """Rows with different prompt lengths, 0/1/2 searches, stop turns 1..3 and every stop reason, in one batch."""
    exs = make_examples([q for q, _ in QUESTIONS])
    scripts = {
        "q0": [" <search> capital of France </search>", " <answer> Paris </answer>"],
        "q1": [" <think> easy </think> <answer> Berlin </answer>"],
        "q2": [" <search> highest mountain </search>", " Not enough. <search> Himalayas Everest </search>",
               " <answer> Mount Everest </answer>"],
        "q3": [" <search> Hamlet </search>", " I give up<|im_end|>"],
        "q4": [" <search> largest planet </search>", " <answer> Jupiter"],  # never closes -> max_turn_tokens
        "q5": [" <search> river north </search>", " <search> Nile </search>", " <search> Africa </search>"],
    }
    eng = engine(model, tok, hook=Script(tok, scripts), batch_size=6, max_searches=2)
    eps = {e.example_id: e for e in eng.run(exs, seed=3)}
    expected = {  # id: (stop reason, queries, answer, turns)
        "q0": (StopReason.ANSWERED, ["capital of France"], "Paris", 2),
        "q1": (StopReason.ANSWERED, [], "Berlin", 1),
        "q2": (StopReason.ANSWERED, ["highest mountain", "Himalayas Everest"], "Mount Everest", 3),
        "q3": (StopReason.PARSE_ERROR, ["Hamlet"], None, 2),
        "q4": (StopReason.MAX_TOKENS, ["largest planet"], None, 2),
        "q5": (StopReason.MAX_TURNS, ["river north", "Nile"], None, 3),
    }
    for k, (reason, queries, answer, turns) in expected.items():
        ep = eps[k]
        assert (ep.stop_reason, ep.queries, ep.answer, ep.turns) == (reason, queries, answer, turns), k
        parts = spans(ep)
        # every search that ran is followed by exactly one inserted block, and nothing else is inserted
        assert [m for m, _ in parts] == [1, 0] * len(queries) + [1], k
        policy = [t for t, m in zip(ep.response_ids, ep.policy_mask) if m]
        want = [t for text in scripts[k][:turns] for t in encode(tok, text)]
        if reason == StopReason.MAX_TOKENS:
            want += [encode(tok, " the")[-1]] * (eng.cfg.max_turn_tokens - len(encode(tok, scripts[k][-1])))
        assert policy == want, k
        for (m, ids), q in zip(parts[1::2], queries):
            assert m == 0 and ids == eng.info_ids(tiny_retriever().search([q], eng.cfg.topk)[0])
    assert eps["q3"].response_ids[-1] == tok.eos_token_id and eps["q3"].policy_mask[-1] == 1
    assert "Mount Everest is the highest mountain" in eps["q2"].response_text
    assert_logprobs_match(model, list(eps.values()))
    # the same episodes one at a time: identical tokens, log-probs equal up to float noise
    for ex in exs[:3]:
        (one,) = engine(model, tok, hook=Script(tok, scripts), batch_size=1, max_searches=2).run([ex], seed=3)
        assert one.response_ids == eps[ex.id].response_ids
        assert torch.allclose(torch.tensor(one.logprobs), torch.tensor(eps[ex.id].logprobs), atol=1e-5)


def test_max_turns(model, tok):
    scripts = {"q0": [f" <search> query {i} </search>" for i in range(5)]}
    (ep,) = engine(model, tok, hook=Script(tok, scripts), max_searches=2).run(make_examples(["Q?"]), seed=0)
    assert ep.stop_reason == StopReason.MAX_TURNS
    assert ep.searches == 2 and ep.queries == ["query 0", "query 1"] and ep.turns == 3
    assert sum(1 for m, _ in spans(ep) if m == 0) == 2  # no block after the refused third search
    assert ep.answer is None
    assert_logprobs_match(model, [ep])


def test_max_searches_zero_refuses_first_search(model, tok):
    scripts = {"q0": [" <search> capital of France </search>"], "q1": [" <answer> Paris </answer>"]}
    eps = engine(model, tok, hook=Script(tok, scripts), max_searches=0).run(make_examples(["A?", "B?"]), seed=0)
    assert eps[0].stop_reason == StopReason.MAX_TURNS and eps[0].searches == 0 and 0 not in eps[0].policy_mask
    assert eps[1].stop_reason == StopReason.ANSWERED and eps[1].answer == "Paris"


def test_max_tokens_turn_budget(model, tok):
    scripts = {"q0": [" <search> capital of France"], "q1": [" <answer> Paris </answer>"]}
    eps = engine(model, tok, hook=Script(tok, scripts), max_turn_tokens=12).run(make_examples(["A?", "B?"]), seed=0)
    assert eps[0].stop_reason == StopReason.MAX_TOKENS and len(eps[0].response_ids) == 12
    assert eps[0].searches == 0 and all(eps[0].policy_mask)
    assert eps[1].stop_reason == StopReason.ANSWERED and eps[1].answer == "Paris"
    assert_logprobs_match(model, eps)


def test_max_tokens_total_budget(model, tok):
    exs = make_examples(["What is the capital of France?"])
    P = len(HFEngine(model, tok, tiny_retriever(), RolloutConfig()).prompt_ids(exs[0].question))
    # turn text that never closes a tag, total budget hit mid-turn
    (ep,) = engine(model, tok, hook=Script(tok, {"q0": [" <answer> Paris"]}), max_total_tokens=P + 10).run(exs)
    assert ep.stop_reason == StopReason.MAX_TOKENS
    assert len(ep.prompt_ids) + len(ep.response_ids) == P + 10
    # a search whose information block would not fit: stop without inserting it
    turns = [" <search> capital of France </search>", " <answer> Paris </answer>"]
    (ep,) = engine(model, tok, hook=Script(tok, {"q0": turns}), max_total_tokens=P + 20).run(exs)
    assert ep.stop_reason == StopReason.MAX_TOKENS and ep.queries == ["capital of France"]
    assert all(ep.policy_mask) and ep.response_ids == encode(tok, turns[0])
    assert_logprobs_match(model, [ep])


def test_parse_error_on_eos_without_tag(model, tok):
    scripts = {"q0": [" I do not know<|im_end|>"], "q1": [" <answer> Paris </answer>"]}
    eps = engine(model, tok, hook=Script(tok, scripts)).run(make_examples(["A?", "Longer question B?"]), seed=0)
    assert eps[0].stop_reason == StopReason.PARSE_ERROR and eps[0].answer is None
    assert eps[0].response_ids == encode(tok, scripts["q0"][0]) and eps[0].response_ids[-1] == tok.eos_token_id
    assert eps[1].stop_reason == StopReason.ANSWERED and eps[1].answer == "Paris"
    assert_logprobs_match(model, eps)


def test_stop_string_without_action_is_parse_error(model, tok):
    scripts = {"q0": [" <search> </search>"], "q1": [" <think> maybe <search> France </search>"]}
    eps = engine(model, tok, hook=Script(tok, scripts)).run(make_examples(["A?", "B?"]), seed=0)
    assert [e.turns for e in eps] == [1, 1]
    assert [e.stop_reason for e in eps] == [StopReason.PARSE_ERROR, StopReason.PARSE_ERROR]


def test_retrieval_error_ends_only_that_episode(model, tok):
    scripts = {
        "q0": [" <search> capital of France </search>", " <answer> Paris </answer>"],
        "q1": [" <search> boom boom </search>", " <answer> never </answer>"],
        "q2": [" <search> highest mountain </search>", " <answer> Everest </answer>"],
    }
    retriever = BoomRetriever(tiny_retriever())
    eps = engine(model, tok, retriever=retriever, hook=Script(tok, scripts)).run(
        make_examples(["A?", "B?", "What is the highest mountain on Earth?"]), seed=0)
    assert eps[1].stop_reason == StopReason.RETRIEVAL_ERROR and "index exploded" in eps[1].metrics["retrieval_error"]
    assert eps[1].queries == ["boom boom"] and eps[1].turns == 1 and all(eps[1].policy_mask)
    assert [(e.stop_reason, e.answer) for e in (eps[0], eps[2])] == [(StopReason.ANSWERED, "Paris"),
                                                                      (StopReason.ANSWERED, "Everest")]
    assert "Mount Everest is the highest" in eps[2].response_text
    assert retriever.calls[0] == ["capital of France", "boom boom", "highest mountain"]  # one batched call first
    assert_logprobs_match(model, eps)


def test_information_block_truncated_by_max_doc_tokens(model, tok):
    turns = [" <search> capital of France </search>", " <answer> Paris </answer>"]
    blocks = {}
    for n in (96, 3):
        (ep,) = engine(model, tok, hook=Script(tok, {"q0": turns}), max_doc_tokens=n, topk=2).run(
            make_examples(["A?"]), seed=0)
        assert ep.stop_reason == StopReason.ANSWERED and ep.answer == "Paris"
        blocks[n] = [t for t, m in zip(ep.response_ids, ep.policy_mask) if m == 0]
        assert_logprobs_match(model, [ep])
    short = tok.decode(blocks[3])
    assert "Seine" in tok.decode(blocks[96]) and "Seine" not in short
    assert short.startswith("\n\n<information>Doc 1 (Title: Paris) Paris is the") and short.endswith(
        "</information>\n\n")
    assert len(blocks[3]) < len(blocks[96]) - 20
    # each passage's text is cut to 3 tokens
    for line in short.strip().removeprefix("<information>").removesuffix("</information>").split("\n"):
        text = line.split(")", 1)[1]
        assert len(encode(tok, text.strip())) <= 3, line


def test_max_info_tokens_keeps_block_closed(model, tok):
    turns = [" <search> capital of France </search>", " <answer> Paris </answer>"]
    eng = engine(model, tok, hook=Script(tok, {"q0": turns}), max_info_tokens=16)
    (ep,) = eng.run(make_examples(["A?"]), seed=0)
    block = [t for t, m in zip(ep.response_ids, ep.policy_mask) if m == 0]
    assert len(block) <= 16
    assert ep.stop_reason == StopReason.ANSWERED
    assert tok.decode(block).endswith("</information>\n\n")
    assert ep.answer == "Paris"


def test_explicit_prompt_ids_replace_agent_prompt(model, tok):
    """``run(prompts=...)`` (non-agent baselines): the given ids are the prompt, padding and log-probs still exact."""
    prompts = [encode(tok, "<|im_start|>user\nWho wrote Hamlet?<|im_end|>\n<|im_start|>assistant\n"),
               encode(tok, "Question: What is the capital of France? Answer:")]
    scripts = {"q0": [" <answer> Shakespeare </answer>"],
               "q1": [" <think> the capital </think> <answer> Paris </answer>"]}
    eps = engine(model, tok, hook=Script(tok, scripts)).run(make_examples(["A?", "B?"]), seed=0, prompts=prompts)
    assert [e.prompt_ids for e in eps] == prompts
    assert [(e.stop_reason, e.answer) for e in eps] == [(StopReason.ANSWERED, "Shakespeare"),
                                                         (StopReason.ANSWERED, "Paris")]
    assert_logprobs_match(model, eps)


def test_prompt_batch_renders_each_question_once(tok, monkeypatch):
    """One render per distinct question, one batched encode: the same ids as prompt_ids one by one."""
    from searche1 import protocol
    from searche1.rollout import tokens

    cfg = RolloutConfig()
    qs = ["Who wrote Hamlet?", "Who wrote Hamlet?", "Capital of France?", "Who wrote Hamlet?"]
    want = [tokens.prompt_ids(tok, q, cfg) for q in qs]
    rendered, build = [], protocol.build_prompt
    monkeypatch.setattr(protocol, "build_prompt", lambda q, *a, **k: rendered.append(q) or build(q, *a, **k))
    out = tokens.prompt_batch(tok, qs, cfg)
    assert out == want and rendered == ["Who wrote Hamlet?", "Capital of France?"] and out[0] is out[1]


def test_info_blocks_batch_equals_one_by_one(tok):
    """A turn's blocks encoded in one batch are the blocks one by one (passages cut by max_doc_tokens, blocks by
    max_info_tokens with the closing tag kept); a failed search stays an exception."""
    from searche1.retrieval.base import Hit
    from searche1.rollout import tokens

    long = " ".join(f"word{i}" for i in range(300))
    lists = [[Hit("1", f'"T"\n{long}'), Hit("2", '"U"\nshort text')], [], [Hit("3", "Paris is in France")]]
    for cfg in (RolloutConfig(max_doc_tokens=20, max_info_tokens=400), RolloutConfig(max_doc_tokens=200,
                                                                                       max_info_tokens=60)):
        one = [tokens.info_ids(tok, h, cfg) for h in lists]
        assert tokens.info_ids_batch(tok, lists, cfg) == one
        boom = RuntimeError("down")
        assert tokens.info_blocks(tok, [lists[0], boom, lists[2]], cfg) == [one[0], boom, one[2]]
    assert len(one[0]) == 60 and tok.decode(one[0]).endswith("</information>\n\n")  # cut, still closed


def test_equal_hit_lists_are_encoded_once(tok, monkeypatch):
    """A turn's equal hit lists (a GRPO group asking one query) are formatted and encoded once, and a passage shared
    by different lists is cut once; each episode still gets the block it would get alone, in its own list."""
    from searche1 import protocol
    from searche1.retrieval.base import Hit
    from searche1.rollout import tokens

    long = " ".join(f"word{i}" for i in range(300))
    a, b = [Hit("1", f'"T"\n{long}'), Hit("2", '"U"\nshort text')], [Hit("3", "Paris is in France")]
    c = [Hit("2", '"U"\nshort text'), Hit("1", f'"T"\n{long}')]  # a's passages, other order: another block
    lists = [a, b, list(a), a, c, b]
    cfg = RolloutConfig(max_doc_tokens=20, max_info_tokens=400)
    want = [tokens.info_ids(tok, h, cfg) for h in lists]
    encoded, cut = [], []
    real_encode, real_truncate = tokens.encode_batch, protocol._truncate_all
    monkeypatch.setattr(tokens, "encode_batch", lambda t, texts: encoded.extend(texts) or real_encode(t, texts))
    monkeypatch.setattr(protocol, "_truncate_all", lambda texts, *a: cut.extend(texts) or real_truncate(texts, *a))
    out = tokens.info_ids_batch(tok, lists, cfg)
    assert out == want and want[0] != want[4]
    assert len({id(ids) for ids in out}) == len(out)  # no shared lists: an engine may extend one
    blocks = [x for x in encoded if x.startswith("\n\n<information>")]
    assert len(blocks) == len(set(blocks)) == 3  # a, b, c
    assert len(cut) == 5  # the passages of a, b and c, each list's own
    calls = []
    monkeypatch.setattr(protocol, "_truncate_all", real_truncate)

    class Counting:  # the tokenizer seen by _truncate_all: how many texts it encodes
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, texts, **kw):
            calls.append(list(texts))
            return self.inner(texts, **kw)

        def decode(self, *a, **kw):
            return self.inner.decode(*a, **kw)

    texts = ["x " * 50, "short", "x " * 50, "short", "other"]
    assert protocol._truncate_all(texts, 10, Counting(tok)) == protocol._truncate_all(texts, 10, tok)
    assert calls == [["x " * 50, "short", "other"]]


def test_stop_check_and_generation_eos_ids():
    import types

    from searche1.rollout.tokens import StopCheck, generation_eos_ids

    class Tok:  # a token per character; counts decode calls
        calls = 0

        def decode(self, ids):
            Tok.calls += 1
            return "".join(chr(i) for i in ids)

    check, ids = StopCheck(Tok()), [ord(c) for c in "ab</search>"]
    assert [check(ids[:k]) for k in range(1, len(ids) + 1)] == [False] * (len(ids) - 1) + [True]
    assert not check([ord(c) for c in "<search>"])  # a '>' that closes no stop string
    calls = Tok.calls
    check(ids[:2])  # 'b' is memoised as no stop tail: no decode at all
    assert Tok.calls == calls
    assert [generation_eos_ids(types.SimpleNamespace(eos_token_id=v)) for v in (None, 2, [2, 3])] == [(), (2,), (2, 3)]
    assert generation_eos_ids(None) == ()


def test_a_peft_policy_gets_the_same_cache_argument_as_its_base(tok):
    """A peft model's forward takes **kwargs: the KV-cache keyword is read off the base model (transformers 5:
    `cache`; the `past_key_values` alias is deprecated)."""
    from peft import LoraConfig, get_peft_model

    base = tiny_model(tok)
    plain = HFEngine(base, tok, tiny_retriever(), RolloutConfig())._cache_kw
    lora = get_peft_model(tiny_model(tok), LoraConfig(r=4, target_modules=["q_proj"]))
    assert HFEngine(lora, tok, tiny_retriever(), RolloutConfig())._cache_kw == plain


def test_rollout_config_rejects_nonpositive_block_sizes():
    """A zero or negative passage/block cap would cut every block to its closing tag (or past it): refused."""
    for name in ("max_doc_tokens", "max_info_tokens"):
        with pytest.raises(ConfigError, match=f"{name}: must be >= 1"):
            RolloutConfig(**{name: 0}).validate()
