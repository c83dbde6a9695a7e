"""The rollout code with a Llama/Mistral-style SentencePiece tokenizer (the tiny tokenizer of ``tiny.py`` is GPT-2-style
byte-level BPE with a chat template and no BOS): '▁' word-boundary pieces, a word-boundary prefix in front of every
encoded text, byte fallback, ``add_bos_token=True``, no chat template.

The tokenizer is a SentencePiece BPE model trained here on a few hundred lines (~0.2 s), wrapped as a transformers
``LlamaTokenizer`` (vocabulary and merges read with sentencepiece, no protobuf), saved and loaded back with
:func:`searche1.models.load_tokenizer` (pad = EOS, as for a real Llama folder).
"""

from __future__ import annotations

import pytest
from tiny import PASSAGES, QUESTIONS, _training_text, tiny_model, tiny_retriever, tiny_tokenizer

from searche1 import protocol
from searche1.data.types import QAExample
from searche1.retrieval.base import Hit
from searche1.rollout import tokens
from searche1.rollout.types import RolloutConfig

spm = pytest.importorskip("sentencepiece")
torch = pytest.importorskip("torch")
# transformers >= 5: LlamaTokenizer(vocab=, merges=) and an extractor that needs no protobuf
_tus = pytest.importorskip("transformers.tokenization_utils_sentencepiece")

OPENERS = ("<search>", "<answer>", "<think>")


def _text() -> list[str]:
    texts = list(_training_text())
    hits = [Hit(p.id, p.contents, 1.0) for p in PASSAGES]
    for q, a in QUESTIONS:  # whole episodes: tags after text ('Paris</answer>') as well as after spaces
        block = protocol.format_information(hits[:2])
        texts += [protocol.build_prompt(q) + f" <search> {q} </search>{block}<answer>{a}</answer>"] * 2
    return texts


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory):
    from transformers import LlamaTokenizer

    from searche1.models import load_tokenizer

    d = tmp_path_factory.mktemp("sp")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_text()), model_prefix=str(d / "sp"), vocab_size=900, model_type="bpe",
        byte_fallback=True, hard_vocab_limit=False, normalization_rule_name="identity", remove_extra_whitespaces=False,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    vocab, _scores, merges = _tus.SentencePieceExtractor(str(d / "sp.model")).extract()
    LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True).save_pretrained(d / "tok")
    tok = load_tokenizer(d / "tok")
    assert tok.chat_template is None and tok.bos_token_id == 1 and tok.pad_token_id == tok.eos_token_id == 2
    v = tok.get_vocab()
    # the pieces the checks below are about
    assert {"▁search", "search", "▁<", "<", "</", "▁</", "▁", "<0x3E>"} <= set(v), "tokenizer lacks a piece"
    return tok


def _ids(tok, *pieces: str) -> list[int]:
    return tok.convert_tokens_to_ids(list(pieces))


def _examples(n: int = 6) -> list[QAExample]:
    return [QAExample(id=f"q{i}", question=q, answers=[a], dataset="tiny") for i, (q, a) in enumerate(QUESTIONS[:n])]


# ------------------------------------------------------------------------------------------- turn-start constraint


def test_constraint_reads_word_boundary_pieces_with_their_space(sp_tok):
    """'<' + '▁search' reads '< search': not a prefix of an opener (the bare decode of '▁search' is 'search')."""
    from searche1.rollout.constraints import TurnStartConstraint, continuation_texts

    c = TurnStartConstraint(sp_tok)
    sp_search, search = _ids(sp_tok, "▁search", "search")
    assert continuation_texts(sp_tok)[sp_search] == " search"
    after_lt = set(c.allowed("<").tolist())
    assert search in after_lt and sp_search not in after_lt
    first = set(c.allowed("").tolist())
    assert set(_ids(sp_tok, "▁<", "<", "<0x3C>")) <= first  # with or without a leading space, or as a byte
    assert not first & {*_ids(sp_tok, "▁", "\n", "<0x0A>"), sp_tok.eos_token_id}  # whitespace only, EOS
    texts = continuation_texts(sp_tok)
    for i in first:
        t = texts[i].lstrip()
        assert any(o.startswith(t) or t.startswith(o) for o in OPENERS), texts[i]
    for prefix in ("<", "<sea", "<an", "<t"):
        for i in c.allowed(prefix).tolist():
            t = prefix + texts[i]
            assert any(o.startswith(t) or t.startswith(o) for o in OPENERS), t


def test_constrained_rollout_turns_open_with_a_tag(sp_tok):
    """Before the fix 19 of 36 such episodes opened with e.g. '<an s...' or '< th...'."""
    from searche1.rollout.hf_engine import HFEngine

    cfg = RolloutConfig(batch_size=12, max_turn_tokens=10, max_total_tokens=500, max_searches=1,
                        turn_start="constrained", chat=False)
    eps = HFEngine(tiny_model(sp_tok), sp_tok, tiny_retriever(), cfg).run(_examples() * 2, seed=3)
    firsts = [sp_tok.decode(ep.response_ids[:10]).lstrip() for ep in eps]
    assert all(f.startswith(OPENERS) for f in firsts), [f for f in firsts if not f.startswith(OPENERS)]


# ------------------------------------------------------------------------------------------------------------- BOS


def test_prompts_start_with_exactly_one_bos(sp_tok):
    from searche1.models import load_tokenizer

    q = QUESTIONS[0][0]
    plain = tokens.prompt_ids(sp_tok, q, RolloutConfig(chat=False))
    assert plain == list(sp_tok(protocol.build_prompt(q, sp_tok, chat=False))["input_ids"])
    assert plain[0] == sp_tok.bos_token_id and plain.count(sp_tok.bos_token_id) == 1
    chat = load_tokenizer(sp_tok.name_or_path)
    for template in ("{{ bos_token }}[INST] {{ messages[0]['content'] }} [/INST]",  # writes BOS itself
                     "[INST] {{ messages[0]['content'] }} [/INST]"):  # relies on add_bos_token
        chat.chat_template = template
        ids = tokens.prompt_ids(chat, q, RolloutConfig(chat=True))
        assert ids[0] == chat.bos_token_id and ids.count(chat.bos_token_id) == 1, template
    # GPT-2-style BPE (SmolLM2 and the tiny tokenizer): no BOS is added
    assert tokens.bos_prefix(tiny_tokenizer()) == []
    assert tokens.prompt_ids(tiny_tokenizer(), q, RolloutConfig(chat=False))[0] != tiny_tokenizer().bos_token_id


def test_bos_consistent_across_sampling_rescoring_warmup_and_ofsd(sp_tok):
    from searche1.ofsd.contexts import student_sequence, teacher_sequence
    from searche1.ofsd.pairs import Pair
    from searche1.rollout.hf_engine import HFEngine
    from searche1.train import episode_tensors
    from searche1.warmup import build_demonstrations

    cfg = RolloutConfig(batch_size=4, max_turn_tokens=16, max_total_tokens=400, chat=False)
    model, exs = tiny_model(sp_tok), _examples(4)
    engine = HFEngine(model, sp_tok, tiny_retriever(), cfg)
    eps = engine.run(exs, seed=1)
    bos = sp_tok.bos_token_id
    assert all(ep.prompt_ids[0] == bos for ep in eps)
    # training re-scores exactly the sampled ids (BOS included) and gets the sampler's log-probs back
    ids, attn, mask, old = episode_tensors(eps, sp_tok.pad_token_id)
    assert (ids[:, 0] == bos).all()
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits.float(), -1)[:, :-1]
    new = lp.gather(-1, ids[:, 1:, None])[..., 0]
    assert mask.sum() > 0 and torch.allclose(new[mask > 0], old[mask > 0], atol=1e-4)
    # warm-up demonstrations: the engine's prompt ids and information blocks
    demos = build_demonstrations(exs, tiny_retriever(), sp_tok, cfg, max_hops=1, answer_unfound=True)
    assert demos and all(d.prompt_ids == engine.prompt_ids(d.question) for d in demos)
    for d in demos:
        hits = tiny_retriever().search([d.queries[0]], cfg.topk)[0]
        assert d.segments[2] == (tokens.info_ids(sp_tok, hits, cfg), False)
    # OFSD: the teacher prompt gets its BOS as well, and the offset still aligns the student's response
    pair = Pair(question=eps[0].question, answers=eps[0].answers, reference=eps[1], student=eps[0], group_index=0)
    seq = teacher_sequence(pair, sp_tok, "answer", chat=False)
    s_ids, _ = student_sequence(pair)
    assert seq.ids[0] == bos and seq.ids.count(bos) == 1 and s_ids[0] == bos
    P = len(pair.student.prompt_ids)
    assert seq.ids[P + seq.offset:] == s_ids[P:]


# ------------------------------------------------------------------------------------------- information blocks


def test_info_block_continues_the_turn_without_a_word_boundary(sp_tok):
    """Encoded alone, '\\n\\n<information>' starts with the lone '▁' of the tokenizer's prefix (the model would read
    '</search> \\n\\n<information>') and a truncated block ended with '▁</' (' </information>')."""
    hits = tiny_retriever().search(["capital of France"], 3)[0]
    cfg = RolloutConfig()
    block = tokens.info_ids(sp_tok, hits, cfg)
    text = protocol.format_information(hits, sp_tok, cfg.max_doc_tokens)
    assert sp_tok.convert_ids_to_tokens(block[0]) != "▁"
    assert sp_tok.decode(block) == text  # nothing added: decode would have dropped only a leading space
    turn = tokens.encode(sp_tok, " <search> capital of France </search>")
    assert protocol.SEARCH_CLOSE + "\n\n" + protocol.INFO_OPEN in sp_tok.decode(turn + block)
    short = tokens.info_ids(sp_tok, hits, RolloutConfig(max_info_tokens=24))
    tail = short[-4:]  # '</', 'information', '>', '\n\n'
    assert len(short) == 24 and sp_tok.decode(tail) == protocol.INFO_CLOSE + "\n\n"
    assert sp_tok.convert_ids_to_tokens(tail)[0] == "</"  # not '▁</'
    # GPT-2-style BPE: unchanged
    tiny = tiny_tokenizer()
    assert tokens.info_ids(tiny, hits, cfg) == tokens.encode(tiny, protocol.format_information(hits, tiny, 128))


# ---------------------------------------------------------------------------------------------------------- stops


@pytest.mark.parametrize("text", [" <search> capital of France </search>", "<answer>Paris</answer>",
                                  "<think> hmm </think><search>x</search>"])
def test_stop_check_on_sentencepiece_pieces(sp_tok, text):
    check = tokens.StopCheck(sp_tok)
    eos = {sp_tok.eos_token_id}
    variants = [tokens.encode(sp_tok, text)]
    stop = next(s for s in protocol.TURN_STOP_STRINGS if text.endswith(s))
    head = tokens.encode(sp_tok, text[: -len(stop)])  # the stop string as byte-fallback pieces
    variants.append(head + _ids(sp_tok, *(f"<0x{b:02X}>" for b in stop.encode())))
    for ids in variants:
        assert sp_tok.decode(ids).strip() == text.strip()
        hits = [k for k in range(1, len(ids) + 1) if check(ids[:k])]
        assert hits == [len(ids)], sp_tok.convert_ids_to_tokens(ids)
        assert check.first_end(ids, len(ids), eos) == (len(ids) - 1, "stop")
        assert check.first_end(ids + [sp_tok.eos_token_id], len(ids) + 1, eos) == (len(ids) - 1, "stop")
    assert check.first_end(tokens.encode(sp_tok, "<search> x </searc"), 99, eos) is None


@pytest.mark.parametrize("mode", ["direct", "naive-rag"])
def test_baseline_eval_prompts_start_with_bos(sp_tok, mode):
    """The direct and naive-RAG baselines' prompts get the tokenizer's BOS as the agent prompt does."""
    from searche1.evaluate import EvalConfig, evaluate
    from searche1.rollout.types import Episode, StopReason

    seen: list[list[int]] = []

    class Spy:  # an engine that records its prompts and answers nothing
        def run(self, exs, *, prompts=None, progress=None, **_):
            seen.extend(prompts)
            return [Episode(example_id=e.id, question=e.question, answers=list(e.answers), dataset=e.dataset,
                            prompt_ids=list(p), stop_reason=StopReason.PARSE_ERROR) for e, p in zip(exs, prompts)]

    exs = _examples(3)
    evaluate(None, sp_tok, tiny_retriever(), {"tiny": exs}, EvalConfig(mode=mode), progress=False, engine=Spy())
    assert len(seen) == 3 and all(p[0] == sp_tok.bos_token_id and p.count(sp_tok.bos_token_id) == 1 for p in seen)
