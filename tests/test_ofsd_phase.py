"""The OFSD phase on a tiny model: teacher frozen, alignment, zero KL for an identical context, exact == top-k at
k = V, the sharded top-k cache (round trip, atomic writes), the phase end to end, config errors, no pairs, LoRA.

The tiny random policy never answers correctly, so the phase runs use a scripted episode reward (first sampled token
id even → 1, as in tests/test_train.py) that gives groups with both correct and incorrect rollouts.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from tiny import QUESTIONS, spy_prefixes, tiny_model, tiny_retriever, tiny_tokenizer

from searche1 import protocol
from searche1.algos.distill import topk_teacher
from searche1.config import from_dict
from searche1.data.types import QAExample
from searche1.errors import ConfigError
from searche1.ofsd import Pair, mine_pairs
from searche1.ofsd.phase import (
    FrozenTeacher,
    OFSDConfig,
    distill,
    distill_loss,
    epoch_order,
    precompute_topk,
    prepare_pairs,
    response_mask,
    run_ofsd_phase,
    sample_groups,
    shared_prompt_len,
)
from searche1.ofsd.teacher import TeacherShards, bytes_per_token, write_teacher_shards
from searche1.rollout import tokens
from searche1.rollout.types import Episode, RolloutConfig

ROLLOUT = RolloutConfig(max_turn_tokens=9, max_total_tokens=400, batch_size=8, max_searches=1)
QS = [QAExample(str(i), q, [a]) for i, (q, a) in enumerate(QUESTIONS)]


def parity_reward(ep):
    r = float(ep.response_ids[0] % 2 == 0)
    return r, {"reward/em": r, "reward/f1": r}


def zero_reward(ep):
    return 0.0, {"reward/em": 0.0, "reward/f1": 0.0}


def plain_context(pair, tokenizer, *, chat=None, max_searches=4, **_):
    """A 'privileged' context that is exactly the student's plain prompt."""
    return protocol.build_prompt(pair.question, tokenizer, chat=chat, max_searches=max_searches)


def cfg(**kw) -> OFSDConfig:
    base = dict(samples_per_question=4, questions=6, bf16="off", lr=3e-3, epochs=1, pairs_per_step=2,
                micro_batch_size=2, pairs_per_shard=2)
    c = OFSDConfig(**{**base, **kw})
    c.validate()
    return c


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def pairs(tok):
    groups, _ = sample_groups(tiny_model(tok), tok, tiny_retriever(), QS, cfg(), ROLLOUT, seed=0,
                              episode_reward=parity_reward)
    ps, stats = mine_pairs(groups)
    assert len(ps) >= 3, stats
    return ps


def items_for(pairs, tok, context="sibling"):
    items, _ = prepare_pairs(pairs, tok, context=context, chat=ROLLOUT.chat, max_searches=ROLLOUT.max_searches)
    return items


def state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------- alignment, teacher


def hand_pair(tok, question: str, student_resp: list[int], student_mask: list[int]) -> Pair:
    prompt = tokens.prompt_ids(tok, question, ROLLOUT)
    ref = Episode("r", question, ["x"], prompt, response_ids=[40, 41, 42], policy_mask=[1, 1, 1],
                  logprobs=[0.0] * 3, reward=1.0, response_text="<answer> x </answer>")
    stu = Episode("s", question, ["x"], prompt, response_ids=student_resp, policy_mask=student_mask,
                  logprobs=[0.0] * len(student_resp), reward=0.0)
    return Pair(question, ["x"], ref, stu, group_index=0, reference_index=0, student_index=1, group=[ref, stu])


def test_alignment_matches_a_naive_unpadded_forward(tok):
    """Batched, left-padded, logits_to_keep: per-token forward KL equals a per-pair loop at len(prompt) + j − 1."""
    ps = [hand_pair(tok, QUESTIONS[0][0], [50, 51, 60, 61, 62, 52, 53], [1, 1, 0, 0, 0, 1, 1]),  # info in the middle
          hand_pair(tok, QUESTIONS[3][0], [70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80], [1] * 11)]
    model = tiny_model(tok)
    teacher = FrozenTeacher(model)
    items = items_for(ps, tok)
    loss, m = distill_loss(model, items, cfg(clip=None), pad_id=tok.pad_token_id, teacher=teacher)
    assert m["ofsd/tokens"] == 4 + 11  # the <information> tokens do not count
    per_tok = []
    with torch.no_grad():
        for p, it in zip(ps, items):
            R, P_s = len(p.student.response_ids), len(p.student.prompt_ids)
            P_t = len(it.teacher_ids) - R
            assert P_t > P_s  # the privileged prompt is longer
            zs = model(input_ids=torch.tensor([it.student_ids])).logits[0]
            zt = model(input_ids=torch.tensor([it.teacher_ids])).logits[0]
            for j, keep in enumerate(p.student.policy_mask):
                if keep:
                    lt, ls = zt[P_t + j - 1].log_softmax(-1), zs[P_s + j - 1].log_softmax(-1)
                    per_tok.append(float((lt.exp() * (lt - ls)).sum()))
    naive = sum(per_tok) / len(per_tok)
    assert naive > 1e-3  # the contexts differ, so does the distribution
    assert float(loss.detach()) == pytest.approx(naive, rel=1e-4, abs=1e-6)
    assert m["ofsd/kl"] == pytest.approx(naive, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("share", [False, True])
def test_logits_only_at_policy_columns_give_the_full_block_loss_and_gradients(tok, tmp_path, share):
    """distill_loss runs the LM head (student and teacher) only at response positions where some row has a policy
    token: the same loss and gradients as the full (B, R_max, V) block, for the exact and the top-k losses. With
    ``share_prompt`` the prompts' shared instructions run once first (batch 1), with the same results."""
    from searche1.algos.distill import forward_kl_topk, get_distill_loss
    from searche1.ofsd.phase import response_logits

    ps = [hand_pair(tok, QUESTIONS[0][0], [50, 51, 60, 61, 62, 52, 53], [1, 1, 0, 0, 0, 1, 1]),
          hand_pair(tok, QUESTIONS[3][0], list(range(70, 81)), [1] * 3 + [0] * 5 + [1] * 3)]
    items = items_for(ps, tok)
    model = tiny_model(tok).train()
    teacher = FrozenTeacher(model)
    c = cfg(clip=5.0, share_prompt=share)
    mask = response_mask(items)  # (2, 11): right-aligned, on at 0-2, 4-5, 8-10
    assert mask.ne(0).any(0).tolist() == [True] * 3 + [False] + [True] * 2 + [False] * 2 + [True] * 3
    pad = tok.pad_token_id

    def grads():
        g = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return g

    seen: list[tuple] = []
    runs: list[tuple] = []
    hooks = [h for m in (model, teacher.model) for h in (
        m.lm_head.register_forward_hook(lambda _m, i, o: seen.append(tuple(i[0].shape))),
        m.model.embed_tokens.register_forward_hook(lambda _m, i, o: runs.append(tuple(i[0].shape))))]
    loss, m = distill_loss(model, items, c, pad_id=pad, teacher=teacher)
    for h in hooks:
        h.remove()
    H = model.config.hidden_size
    # teacher, then student: 8 of the block's 11 positions (after the shared prefix's one position, when shared)
    assert seen == ([(1, 1, H), (2, 8, H)] if share else [(2, 8, H)]) * 2
    lens = [(len(it.teacher_ids), len(it.student_ids)) for it in items]
    P = shared_prompt_len([it.student_ids for it in items], [it.response_len for it in items])
    assert P >= 16 and P == shared_prompt_len([it.teacher_ids for it in items], [it.response_len for it in items])
    T_t, T_s = (max(x) for x in zip(*lens))
    assert runs == ([(1, P), (2, T_t - P), (1, P), (2, T_s - P)] if share else [(2, T_t), (2, T_s)])
    loss.backward()
    got = grads()
    s = response_logits(model, [it.student_ids for it in items], [it.response_len for it in items], pad, "cpu")
    with torch.no_grad():
        t = response_logits(teacher.model, [it.teacher_ids for it in items], [it.response_len for it in items],
                            pad, "cpu")
    ref, rm = get_distill_loss(c.loss)(s, t, mask, clip=c.clip, beta=c.jsd_beta)
    ref.backward()
    # Without sharing the columns are the same sums as the block: equal to float rounding. Sharing reorders the
    # prompt's sums (logits agree to ~5e-7, checked first) and the KL (~1e-2 here) is a small difference of large
    # terms, so it is compared as the other prefix-sharing tests compare (test_scoring, test_warmup).
    tol = {"rel": 1e-4, "abs": 1e-6} if share else {"rel": 1e-5}
    if share:
        for seqs in ([it.student_ids for it in items], [it.teacher_ids for it in items]):
            lens = [it.response_len for it in items]
            with torch.no_grad():
                torch.testing.assert_close(response_logits(model, seqs, lens, pad, "cpu", prefix=P),
                                           response_logits(model, seqs, lens, pad, "cpu"), rtol=1e-5, atol=1e-5)
                with pytest.raises(ValueError, match="shared_prompt_len"):  # past the first difference
                    response_logits(model, seqs, lens, pad, "cpu", prefix=P + 1)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), **tol) and m == pytest.approx(rm, **tol)
    for n, g in grads().items():
        torch.testing.assert_close(got[n], g, rtol=1e-4, atol=1e-6 if share else 1e-7, msg=n)

    k = 16  # the top-k loss reads its cached targets at the same columns
    ct = cfg(teacher_mode="topk", topk=k, clip=5.0, share_prompt=share)
    shards = precompute_topk(teacher, items, tmp_path / "teacher", ct, pad_id=pad)
    lt, _ = distill_loss(model, items, ct, pad_id=pad, shards=shards, pair_ids=[0, 1])
    idx, logp, tail = topk_teacher(t, k)
    lr, _ = forward_kl_topk(s.detach(), idx, logp, tail, mask, clip=ct.clip)
    assert float(lt) == pytest.approx(float(lr), **tol) and float(lt) > 1e-4  # (the tiny model: ~8e-4)


def test_shared_prompts_give_the_same_distillation(tok, pairs, monkeypatch):
    """Two epochs with share_prompt on and off (micro-batches of n − 1 pairs and 1): the same KL, loss and weights,
    and the shared runs really ran the prompts' common prefix apart (teacher and student, every micro-batch of more
    than one pair). AdamW turns
    noise-level gradient entries (rare tokens' embedding rows: ~1e-8 apart) into steps of up to ``lr``, so the
    weights are compared at a small ``lr`` (the gap scales with it: 2.6e-5 at 3e-3, 8.5e-6 at 1e-3)."""
    import searche1.ofsd.phase as phase

    items = items_for(pairs, tok)
    m = len(items) - 1  # micro-batches of m pairs and of 1 (nothing to share)
    out, weights = {}, {}
    for share in (False, True):
        prefixes = spy_prefixes(monkeypatch, phase, "response_logits")
        model = tiny_model(tok)
        teacher = FrozenTeacher(model)
        c = cfg(epochs=2, micro_batch_size=m, pairs_per_step=m, lr=3e-4, share_prompt=share)
        out[share] = distill(model, items, c, pad_id=tok.pad_token_id, teacher=teacher)
        weights[share] = state(model)
        # pairs per micro-batch, teacher then student, over two epochs
        rows = [min(m, len(items) - s) for s in range(0, len(items), m) for _ in ("teacher", "student")] * 2
        assert len(prefixes) == len(rows) and 1 in rows and m in rows
        assert [p >= 16 for p in prefixes] == [share and n > 1 for n in rows]
        monkeypatch.undo()
    assert out[False]["ofsd/steps"] == out[True]["ofsd/steps"] > 0
    for key in ("ofsd/kl_first", "ofsd/kl_last", "ofsd/loss", "ofsd/grad_norm"):
        assert out[True][key] == pytest.approx(out[False][key], rel=1e-4, abs=1e-6), key
    for k in weights[False]:
        assert torch.allclose(weights[True][k], weights[False][k], rtol=1e-5, atol=1e-5), k
    assert changed(state(tiny_model(tok)), weights[True])


def test_a_steps_pairs_of_one_question_share_a_micro_batch(tok, monkeypatch):
    """With share_prompt, a step's pairs go into micro-batches in the order of their teacher prompts: the pairs of
    one question (student: all_others, shuffled apart by the epoch order) run together, their whole prompts once."""
    import searche1.ofsd.phase as phase

    groups, _ = sample_groups(tiny_model(tok), tok, tiny_retriever(), QS, cfg(), ROLLOUT, seed=0,
                              episode_reward=parity_reward)
    ps, _ = mine_pairs(groups, student="all_others")
    items = items_for(ps, tok)
    k = cfg().samples_per_question - 1  # pairs per question
    assert len(items) >= 2 * k and len(items) % k == 0
    order = epoch_order(len(items), 2, random.Random(0))
    assert any(items[a].pair.question != items[b].pair.question for a, b in zip(order[::k], order[1::k]))
    questions: list[set] = []
    real = FrozenTeacher.response_logits

    def spy(self, batch, *a, **kw):
        questions.append({it.pair.question for it in batch})
        return real(self, batch, *a, **kw)

    monkeypatch.setattr(FrozenTeacher, "response_logits", spy)
    prefixes = spy_prefixes(monkeypatch, phase, "response_logits")
    model = tiny_model(tok)
    distill(model, items, cfg(pairs_per_step=len(items), micro_batch_size=k), pad_id=tok.pad_token_id,
            teacher=FrozenTeacher(model))
    assert len(questions) == len(items) // k and all(len(q) == 1 for q in questions)  # one question per micro-batch
    whole = {it.pair.question: len(it.teacher_ids) - it.response_len - 1 for it in items}
    assert prefixes[::2] == [whole[next(iter(q))] for q in questions]  # the teacher's whole prompt, once


def test_teacher_shares_prompts_under_gradient_checkpointing(tok, pairs, monkeypatch):
    """Gradient checkpointing turns the student's prefix sharing off (no KV cache with gradients) but not the
    teacher's (no gradients): the teacher's logits are those of whole sequences."""
    import searche1.ofsd.phase as phase

    items = items_for(pairs, tok)[:3]
    model = tiny_model(tok)
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()  # (transformers >= 5.2x renamed it)
    assert not phase.can_share_prefix(model)
    model.train()
    teacher = FrozenTeacher(model)
    prefixes = spy_prefixes(monkeypatch, phase, "response_logits")
    shared = teacher.response_logits(items, tok.pad_token_id, "cpu", False, share=True)
    whole = teacher.response_logits(items, tok.pad_token_id, "cpu", False, share=False)
    assert prefixes[0] >= 16 and prefixes[1] == 0
    torch.testing.assert_close(shared, whole, rtol=1e-5, atol=1e-5)
    loss, _ = distill_loss(model, items, cfg(), pad_id=tok.pad_token_id, teacher=teacher)
    assert prefixes[2] >= 16 and prefixes[3] == 0  # teacher shared, student (checkpointed) whole
    loss.backward()


def test_teacher_is_frozen_while_the_student_trains(tok, pairs):
    model = tiny_model(tok)
    teacher = FrozenTeacher(model)
    assert teacher.model is not model and not teacher.adapter_off
    t0, s0 = state(teacher.model), state(model)
    out = distill(model, items_for(pairs, tok), cfg(lr=1e-2, epochs=2), pad_id=tok.pad_token_id, teacher=teacher)
    assert out["ofsd/steps"] > 0 and out["ofsd/skipped_nonfinite"] == 0
    assert all(not p.requires_grad and p.grad is None for p in teacher.model.parameters())
    assert not changed(t0, state(teacher.model))  # teacher weights identical
    assert changed(s0, state(model))  # student moved
    assert not teacher.model.training


def test_identical_context_gives_zero_kl_and_zero_gradient(tok, pairs):
    model = tiny_model(tok)
    teacher = FrozenTeacher(model)
    items = items_for(pairs, tok, context=plain_context)
    assert all(it.teacher_ids == it.student_ids for it in items)
    model.train()
    loss, m = distill_loss(model, items, cfg(), pad_id=tok.pad_token_id, teacher=teacher)
    assert abs(m["ofsd/kl"]) < 1e-6 and abs(float(loss.detach())) < 1e-6 and m["ofsd/tokens"] > 0
    loss.backward()
    g = max(float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None)
    assert g < 1e-6


# ------------------------------------------------------------------------------------------------ top-k cache


def test_exact_and_topk_with_k_equal_vocab_agree(tok, pairs, tmp_path):
    """In float64, so the two losses' different summation orders do not count: in float32 they differ by rel
    1.1e-5 on an AVX512 CPU (below 1e-5 on others); in float64 the gap left is the cache's float32 log-probs."""
    V = len(tok)
    items = items_for(pairs, tok)
    m1, m2 = tiny_model(tok).double(), tiny_model(tok).double()
    ce, ct = cfg(lr=1e-2, epochs=2), cfg(lr=1e-2, epochs=2, teacher_mode="topk", topk=V)
    shards = precompute_topk(FrozenTeacher(m2), items, tmp_path / "teacher", ct, pad_id=tok.pad_token_id)
    assert shards.k == V and len(shards) == len(items)
    batch = items[:2]
    le, _ = distill_loss(m1, batch, ce, pad_id=tok.pad_token_id, teacher=FrozenTeacher(m1))
    lt, _ = distill_loss(m2, batch, ct, pad_id=tok.pad_token_id, shards=shards, pair_ids=[0, 1])
    le, lt = float(le.detach()), float(lt.detach())
    assert le > 1e-3 and lt == pytest.approx(le, rel=1e-6)  # measured: rel 1.5e-7
    oe = distill(m1, items, ce, pad_id=tok.pad_token_id, teacher=FrozenTeacher(m1))
    ot = distill(m2, items, ct, pad_id=tok.pad_token_id, shards=shards)
    for key in ("ofsd/kl_first", "ofsd/kl_last", "ofsd/loss"):
        assert ot[key] == pytest.approx(oe[key], rel=1e-4), key
    a, b = state(m1), state(m2)  # Adam turns float noise in near-zero gradients into lr-sized steps: loose atol
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)


def test_topk_shards_round_trip_and_are_read_shard_by_shard(tok, pairs, tmp_path):
    k = 8
    items = items_for(pairs, tok)
    c = cfg(teacher_mode="topk", topk=k, pairs_per_shard=2)
    model = tiny_model(tok)
    teacher = FrozenTeacher(model)
    shards = precompute_topk(teacher, items, tmp_path / "teacher", c, pad_id=tok.pad_token_id)
    files = sorted(p.name for p in (tmp_path / "teacher").iterdir())
    n_shards = -(-len(items) // 2)
    assert files == ["index.json"] + [f"shard-{i:05d}.safetensors" for i in range(n_shards)]
    index = json.loads((tmp_path / "teacher" / "index.json").read_text())
    assert index["num_pairs"] == len(items) and index["k"] == k and len(index["shards"]) == n_shards
    assert shards.tokens == sum(it.tokens for it in items)
    assert shards.data_bytes / shards.tokens == bytes_per_token(k) == k * (4 + 4) + 4
    # the stored rows are the teacher's top-k at exactly the student's policy tokens
    mb = c.micro_batch_size  # same batches as the teacher pass, so the padded forwards are bit-identical
    for s in range(0, len(items), mb):
        batch = items[s:s + mb]
        logits = teacher.response_logits(batch, tok.pad_token_id, "cpu", False, share=c.share_prompt)
        idx, logp, tail = topk_teacher(logits, k)
        keep = response_mask(batch) != 0  # (B, R)
        for b, it in enumerate(batch):
            gi, gl, gt = shards.get(s + b)
            assert gi.shape == (it.tokens, k)
            assert torch.equal(gi, idx[b][keep[b]]) and torch.equal(gl, logp[b][keep[b]])
            assert torch.equal(gt, tail[b][keep[b]])
    fresh = TeacherShards(tmp_path / "teacher")
    distill(model, items, c, pad_id=tok.pad_token_id, shards=fresh)
    assert fresh.loads == n_shards  # one epoch visits the pairs shard by shard: each file read once


def test_shard_writing_is_atomic(tmp_path):
    final = tmp_path / "teacher"
    k = 3

    def rec(n=2):
        return torch.zeros((n, k), dtype=torch.long), torch.zeros((n, k)), torch.zeros(n)

    def failing(existing: int = 0):
        for i in range(5):
            yield rec()
            if i == 3:
                # two new shards are written by now, in a hidden folder only; the visible one is the old or none
                assert (TeacherShards(final).num_pairs == existing) if existing else not final.exists()
                hidden = [p for p in tmp_path.iterdir() if p.name.startswith(".teacher.tmp")]
                assert len(hidden) == 1 and (hidden[0] / "shard-00001.safetensors").is_file()
                raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        write_teacher_shards(final, failing(), k=k, pairs_per_shard=2)
    assert list(tmp_path.iterdir()) == []  # nothing visible, temp folder removed
    write_teacher_shards(final, [rec(), rec(1)], k=k, pairs_per_shard=2)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        write_teacher_shards(final, failing(existing=2), k=k, pairs_per_shard=2)
    old = TeacherShards(final)  # the previous complete cache survives a failed rewrite
    assert len(old) == 2 and old.tokens == 3
    assert [p.name for p in tmp_path.iterdir()] == ["teacher"]


# -------------------------------------------------------------------------------------------------- the phase


@pytest.mark.parametrize("mode", ["exact", "topk"])
def test_phase_mines_pairs_trains_and_kl_decreases(tok, tmp_path, mode):
    model = tiny_model(tok)
    s0 = state(model)
    c = cfg(epochs=5, lr=3e-3, teacher_mode=mode, topk=32)
    out = run_ofsd_phase(model, tok, tiny_retriever(), QS, c, ROLLOUT, tmp_path, progress=False,
                         episode_reward=parity_reward)
    assert out["ofsd/pairs"] >= 3 and out["ofsd/pairs_trained"] == out["ofsd/pairs"]
    assert out["ofsd/rollouts"] == 6 * 4 and 0 < out["ofsd/reward_em"] < 1
    assert out["ofsd/steps"] == 5 * -(-out["ofsd/pairs"] // 2) and out["ofsd/skipped_nonfinite"] == 0
    assert out["ofsd/kl_first"] > 0 and out["ofsd/kl_last"] < 0.7 * out["ofsd/kl_first"]
    for key in ("ofsd/searches", "ofsd/clip_frac", "ofsd/skipped_no_correct", "ofsd/teacher_bytes_per_token",
                "time/ofsd_rollout_s", "time/ofsd_teacher_s", "time/ofsd_train_s"):
        assert key in out
    assert changed(s0, state(model))
    if mode == "topk":
        assert out["ofsd/teacher_bytes_per_token"] == bytes_per_token(32)
        assert (tmp_path / "teacher" / "index.json").is_file()
    else:
        assert out["ofsd/teacher_bytes_per_token"] == len(tok) * 4
        assert not (tmp_path / "teacher").exists()


def test_teacher_copy_is_bf16_under_autocast(tok, tmp_path, monkeypatch):
    """Under bf16 autocast the phase's teacher is a bf16 copy (half the memory of the fp32 trained weights): its
    logits match an fp32 copy under autocast to bf16 rounding, and the phase still trains the fp32 policy."""
    import searche1.ofsd.phase as phase

    model = tiny_model(tok)
    items = items_for([hand_pair(tok, QUESTIONS[0][0], [50, 51, 60, 61, 52], [1, 1, 0, 0, 1])], tok)
    half, full = FrozenTeacher(model, torch.bfloat16), FrozenTeacher(model)
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16} and not half.model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32} and all(p.requires_grad for p in model.parameters())
    lh, lf = (t.response_logits(items, tok.pad_token_id, "cpu", True).float().log_softmax(-1) for t in (half, full))
    assert lh.shape == lf.shape and (lh - lf).abs().max() < 0.05 and (lh - lf).abs().mean() < 0.01
    dtypes = []
    monkeypatch.setattr(phase, "FrozenTeacher",
                        lambda m, dtype=None, source=None: dtypes.append(dtype) or FrozenTeacher(m, dtype, source))
    s0 = state(model)
    out = run_ofsd_phase(model, tok, tiny_retriever(), QS, cfg(bf16="on"), ROLLOUT, tmp_path, progress=False,
                         episode_reward=parity_reward)
    assert dtypes == [torch.bfloat16] and out["ofsd/pairs_trained"] > 0 and changed(s0, state(model))
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_teacher_reuses_the_samplers_copy(tok, tmp_path, monkeypatch):
    """With the sampler's own copy of θ_r in the teacher's dtype (a bf16 sampling copy under autocast) the teacher
    is that copy, not another one: the same phase metrics and trained weights as with a copy of its own; a source
    in another dtype is not used."""
    import copy

    import searche1.ofsd.phase as phase
    from searche1.rollout.hf_engine import HFEngine

    used = []
    real = phase.FrozenTeacher.response_logits
    monkeypatch.setattr(phase.FrozenTeacher, "response_logits",
                        lambda self, *a, **kw: used.append(self.model) or real(self, *a, **kw))
    outs, weights = {}, {}
    for reuse in (False, True):
        model = tiny_model(tok)
        sampler = copy.deepcopy(model).to(torch.bfloat16).eval()
        engine = HFEngine(sampler, tok, tiny_retriever(), ROLLOUT)
        used.clear()
        outs[reuse] = run_ofsd_phase(model, tok, tiny_retriever(), QS, cfg(bf16="on"), ROLLOUT, tmp_path / str(reuse),
                                     progress=False, episode_reward=parity_reward, engine=engine,
                                     teacher_source=sampler if reuse else None)
        weights[reuse] = state(model)
        assert used and all((m is sampler) == reuse for m in used)
    assert outs[True]["ofsd/pairs_trained"] > 0
    for k in ("ofsd/pairs", "ofsd/kl_first", "ofsd/kl_last", "ofsd/loss", "ofsd/grad_norm"):
        assert outs[True][k] == outs[False][k], k
    assert all(torch.equal(weights[True][k], weights[False][k]) for k in weights[True])
    fp32 = tiny_model(tok)
    assert FrozenTeacher(fp32, torch.bfloat16, source=copy.deepcopy(fp32)).model.dtype == torch.bfloat16  # copied


def test_no_pairs_leaves_the_model_unchanged(tok, tmp_path):
    model = tiny_model(tok)
    s0 = state(model)
    out = run_ofsd_phase(model, tok, tiny_retriever(), QS, cfg(teacher_mode="topk"), ROLLOUT, tmp_path,
                         progress=False, episode_reward=zero_reward)
    assert out["ofsd/pairs"] == 0 and out["ofsd/skipped_no_correct"] == 6 and out["ofsd/steps"] == 0
    assert "ofsd/kl" not in out
    assert not changed(s0, state(model))
    assert not (tmp_path / "teacher").exists()


def test_config_validation():
    with pytest.raises(ConfigError, match="topk approximates forward KL only, not 'reverse_kl'.*teacher_mode: exact"):
        from_dict(OFSDConfig, {"teacher_mode": "topk", "loss": "reverse_kl"})
    with pytest.raises(ConfigError, match="context: unknown privileged context 'nope'.*answer, hindsight, sibling"):
        from_dict(OFSDConfig, {"context": "nope"})
    with pytest.raises(ConfigError, match="loss: unknown distillation loss 'kl'.*forward_kl, jsd, reverse_kl"):
        from_dict(OFSDConfig, {"loss": "kl"})
    with pytest.raises(ConfigError, match="student: unknown rule 'best'.*most_different, all_others"):
        from_dict(OFSDConfig, {"student": "best"})
    with pytest.raises(ConfigError, match="reward: unknown reward 'bleu'"):
        from_dict(OFSDConfig, {"reward": "bleu"})
    with pytest.raises(ConfigError, match="samples_per_question: pair mining needs at least 2"):
        from_dict(OFSDConfig, {"samples_per_question": 1})
    with pytest.raises(ConfigError, match="teacher_mode: 'cached' is not one of"):
        from_dict(OFSDConfig, {"teacher_mode": "cached"})
    ok = from_dict(OFSDConfig, {"loss": "jsd", "clip": None})
    assert ok.samples_per_question == 5 and ok.context == "sibling" and ok.clip is None


def test_lora_teacher_is_the_adapter_off(tok, pairs):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_model(tok), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                  task_type="CAUSAL_LM"))
    teacher = FrozenTeacher(model)
    assert teacher.adapter_off and teacher.model is model  # fresh adapter: no copy
    items = items_for(pairs, tok)
    before = teacher.response_logits(items[:2], tok.pad_token_id, "cpu", False)
    base0 = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    out = distill(model, items, cfg(lr=1e-2, epochs=2), pad_id=tok.pad_token_id, teacher=teacher)
    assert out["ofsd/kl_last"] < out["ofsd/kl_first"]
    after = teacher.response_logits(items[:2], tok.pad_token_id, "cpu", False)
    torch.testing.assert_close(before, after)  # the teacher (adapter off) did not move
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in base0.items())  # only the adapter trained
    assert not FrozenTeacher(model).adapter_off  # a trained adapter is deep-copied instead


def test_sampling_shows_a_progress_bar_of_episodes(tok, capsys):
    """Re-sampling is most of an OFSD phase on a CPU: it has its own bar, which counts every episode."""
    c = cfg()
    sample_groups(tiny_model(tok), tok, tiny_retriever(), QS, c, ROLLOUT, seed=0, episode_reward=parity_reward,
                  progress=True)
    n = min(c.questions, len(QS)) * c.samples_per_question
    err = capsys.readouterr().err
    assert "ofsd sampling: 100%" in err and f"{n}/{n}" in err, err[-300:]


def only_question_reward(text):
    """Every rollout of question ``text`` is correct (so its group gives a pair), every other one wrong."""
    def reward(ep):
        r = float(ep.question == text)
        return r, {"reward/em": r, "reward/f1": r}
    return reward


def test_min_pairs_samples_further_batches_until_enough_pairs(tok):
    """``min_pairs``: the first batch is exactly the one ``min_pairs: 0`` draws (same questions, same rollouts);
    further batches of new questions follow until the groups give enough pairs, and no batch after that."""
    base, base_stats = sample_groups(tiny_model(tok), tok, tiny_retriever(), QS, cfg(questions=2), ROLLOUT, seed=3,
                                     episode_reward=zero_reward)
    assert base_stats["ofsd/questions"] == 2 and base_stats["ofsd/batches"] == 1
    first = [g[0].question for g in base]
    target = next(q.question for q in QS if q.question not in first)
    groups, stats = sample_groups(tiny_model(tok), tok, tiny_retriever(), QS, cfg(questions=2, min_pairs=1),
                                  ROLLOUT, seed=3, episode_reward=only_question_reward(target))
    asked = [g[0].question for g in groups]
    assert asked[:2] == first and len(set(asked)) == len(asked)  # only adds, never repeats a question
    assert [e.response_ids for g in groups[:2] for e in g] == [e.response_ids for g in base for e in g]
    assert all(len({e.question for e in g}) == 1 and len(g) == 4 for g in groups)
    assert target in asked[-2:]  # it stopped with the batch that brought the first pair
    assert len(mine_pairs(groups)[0]) == 1
    assert stats["ofsd/questions"] == len(groups) and stats["ofsd/batches"] == (len(groups) + 1) // 2
    assert stats["ofsd/rollouts"] == 4 * len(groups)


@pytest.mark.parametrize("max_questions, questions, batches", [(3, 3, 2), (0, 6, 3), (1, 2, 1)])
def test_min_pairs_stops_at_max_questions_or_the_pool(tok, capsys, max_questions, questions, batches):
    """A policy that never answers right: sampling stops at ``max_questions`` (0: 4 × questions, here the pool of 6;
    below ``questions``: the one batch). The bar grows with each batch and says why."""
    groups, stats = sample_groups(tiny_model(tok), tok, tiny_retriever(), QS,
                                  cfg(questions=2, min_pairs=1, max_questions=max_questions), ROLLOUT, seed=0,
                                  episode_reward=zero_reward, progress=True)
    err = capsys.readouterr().err
    n = 4 * questions
    assert f"{n}/{n}" in err and ("0/1 pairs from 2 questions" in err) == (batches > 1), err[-300:]
    assert len(groups) == questions and stats["ofsd/questions"] == questions and stats["ofsd/batches"] == batches
    assert len({g[0].question for g in groups}) == questions


def test_min_pairs_met_by_the_first_batch_samples_no_more(tok):
    all_right = lambda ep: (1.0, {"reward/em": 1.0, "reward/f1": 1.0})  # noqa: E731
    groups, stats = sample_groups(tiny_model(tok), tok, tiny_retriever(), QS, cfg(questions=2, min_pairs=2),
                                  ROLLOUT, seed=0, episode_reward=all_right)
    assert len(groups) == 2 and stats["ofsd/batches"] == 1


@pytest.mark.parametrize("kw, field", [({"min_pairs": -1}, "min_pairs"), ({"max_questions": -1}, "max_questions")])
def test_min_pairs_options_are_checked(kw, field):
    with pytest.raises(ConfigError, match=field):
        OFSDConfig(**kw).validate()
