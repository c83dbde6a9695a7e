"""searche1.scoring.masked_logprobs: the LM head only at loss columns gives the log-probs and gradients of full
logits, for plain, peft and logits_to_keep-less models; the warm-up loss equals HF's ``labels`` loss."""

from __future__ import annotations

import pytest
import torch

from searche1.algos import token_logprobs
from searche1.scoring import accepts_logits_to_keep, kept_columns, masked_logprobs


def _batch(V: int, seed: int = 0):
    """Right-padded ids (3, 24) whose rows' loss tokens sit in different, partly overlapping columns."""
    g = torch.Generator().manual_seed(seed)
    B, T = 3, 24
    ids = torch.randint(3, V, (B, T), generator=g)
    attn = torch.ones(B, T, dtype=torch.long)
    attn[2, 20:] = 0  # row 2 is shorter (right padding)
    ids[2, 20:] = 0
    mask = torch.zeros(B, T - 1)
    mask[0, 5:9] = 1
    mask[0, 15:18] = 1
    mask[1, 7:11] = 1
    mask[2, 12:19] = 1
    return ids, attn, mask


def _full(model, ids, attn, mask, temperature=1.0):
    logits = model(input_ids=ids, attention_mask=attn).logits
    return token_logprobs(logits[:, :-1], ids[:, 1:], temperature=temperature) * mask


@pytest.fixture()
def model():
    from tiny import tiny_model

    return tiny_model().train()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_same_logprobs_and_grads_as_full_logits(model, temperature):
    ids, attn, mask = _batch(model.config.vocab_size)
    adv = torch.randn(mask.shape[0], 1)

    ref = _full(model, ids, attn, mask, temperature)
    (ref * adv).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    got = masked_logprobs(model, ids, attn, mask, temperature=temperature)
    assert got.shape == mask.shape and got.dtype == torch.float32
    assert torch.all(got[mask == 0] == 0)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    (got * adv).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)


def test_lm_head_sees_only_the_loss_columns(model):
    ids, attn, mask = _batch(model.config.vocab_size)
    cols = kept_columns(mask)
    assert cols.tolist() == [5, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18]  # the union over rows, sorted
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    masked_logprobs(model, ids, attn, mask)
    hook.remove()
    assert seen == [(3, len(cols), model.config.hidden_size)]


def test_no_loss_token_still_runs_forward_and_backward(model):
    ids, attn, mask = _batch(model.config.vocab_size)
    mask.zero_()
    assert kept_columns(mask).tolist() == [0]
    lp = masked_logprobs(model, ids, attn, mask)
    assert torch.all(lp == 0)
    (lp * mask).sum().backward()  # lockstep ranks: a graph with zero gradient
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in model.parameters() if p.requires_grad)


class _NoKeep(torch.nn.Module):
    """A causal LM whose forward has no ``logits_to_keep``: full logits every time."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids=None, attention_mask=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_models_without_logits_to_keep_get_full_logits_then_the_columns(model):
    wrapped = _NoKeep(model)
    assert accepts_logits_to_keep(model) and not accepts_logits_to_keep(wrapped)
    ids, attn, mask = _batch(model.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(masked_logprobs(wrapped, ids, attn, mask), _full(model, ids, attn, mask),
                                   rtol=1e-5, atol=1e-5)


def test_every_column_kept(model):
    ids, attn, mask = _batch(model.config.vocab_size)
    mask.fill_(1.0)
    with torch.no_grad():
        torch.testing.assert_close(masked_logprobs(model, ids, attn, mask), _full(model, ids, attn, mask),
                                   rtol=1e-5, atol=1e-5)


def test_peft_model(tmp_path):
    from tiny import tiny_model, tiny_tokenizer

    from searche1.models import ModelConfig, load_policy

    tiny_model(tiny_tokenizer()).save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    lora, _ = load_policy(ModelConfig(name_or_path=str(tmp_path / "m"), dtype="float32", device="cpu", lora_r=4),
                          trainable=True)
    assert accepts_logits_to_keep(lora)
    ids, attn, mask = _batch(lora.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(masked_logprobs(lora, ids, attn, mask), _full(lora, ids, attn, mask),
                                   rtol=1e-5, atol=1e-5)
    ids, attn, mask = _group(lora.config.vocab_size, 9)  # a shared prompt through the adapter, with gradients
    for p in lora.parameters():
        p.grad = None
    (masked_logprobs(lora, ids, attn, mask, prefix=9) * mask).sum().backward()
    shared = {n: p.grad.clone() for n, p in lora.named_parameters() if p.requires_grad}
    for p in lora.parameters():
        p.grad = None
    (_full(lora, ids, attn, mask) * mask).sum().backward()
    assert shared and all(torch.allclose(p.grad, shared[n], rtol=1e-4, atol=1e-6)
                          for n, p in lora.named_parameters() if p.requires_grad)


def test_warmup_loss_is_hf_labels_loss(model):
    """The warm-up's loss (searche1.warmup.train_warmup) is the mean cross-entropy HF computes from ``labels``."""
    ids, attn, mask = _batch(model.config.vocab_size)
    labels = torch.full_like(ids, -100)
    labels[:, 1:][mask.bool()] = ids[:, 1:][mask.bool()]
    hf = model(input_ids=ids, attention_mask=attn, labels=labels).loss
    on = (labels[:, 1:] != -100).float()
    ours = -(masked_logprobs(model, ids, attn, on) * on).sum() / on.sum()
    torch.testing.assert_close(ours, hf, rtol=1e-5, atol=1e-6)


def _group(V: int, P: int = 9, seed: int = 1):
    """One GRPO group: 4 right-padded rows sharing their first ``P`` tokens, loss tokens from column P-1 on."""
    g = torch.Generator().manual_seed(seed)
    B, T = 4, 26
    ids = torch.randint(3, V, (B, T), generator=g)
    ids[:, :P] = ids[0, :P]
    attn = torch.ones(B, T, dtype=torch.long)
    for b, n in ((1, 20), (3, 15)):
        attn[b, n:] = 0
        ids[b, n:] = 0
    mask = torch.zeros(B, T - 1)
    mask[:, P - 1:P + 4] = 1  # the first turn, from the column that predicts the first response token
    mask[0, 18:24] = 1  # a second turn after a (non-policy) information block
    mask[1, 16:19] = 1
    mask[3, P + 1:14] = 1
    return ids, attn, mask


@pytest.mark.parametrize("first_turn", [True, False])
def test_shared_prefix_same_logprobs_and_grads(model, first_turn):
    from searche1.scoring import can_share_prefix

    P = 9
    ids, attn, mask = _group(model.config.vocab_size, P)
    if not first_turn:
        mask[:, :P + 1] = 0  # no loss token at the prompt's last column: its logits are not needed
    assert can_share_prefix(model)
    adv = torch.randn(mask.shape[0], 1)
    ref = masked_logprobs(model, ids, attn, mask)
    (ref * adv).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    rows = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, i, o: rows.append(tuple(i[0].shape)))
    got = masked_logprobs(model, ids, attn, mask, prefix=P)
    hook.remove()
    assert rows == [(1, P), (4, ids.shape[1] - P)]  # the prompt once, then the continuations on its cache
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert torch.all(got[mask == 0] == 0)
    (got * adv).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)


def test_shared_prefix_falls_back_when_it_cannot_apply(model):
    ids, attn, mask = _group(model.config.vocab_size, 9)
    with torch.no_grad():
        ref = masked_logprobs(model, ids, attn, mask)
        for prefix, rows in ((12, ids), (9, ids[:1])):  # a loss token inside the "prefix"; a single row
            m = mask[: len(rows)]
            torch.testing.assert_close(masked_logprobs(model, rows, attn[: len(rows)], m, prefix=prefix),
                                       ref[: len(rows)], rtol=1e-5, atol=1e-5)


def test_no_prefix_sharing_under_gradient_checkpointing(model):
    from searche1.scoring import can_share_prefix

    assert can_share_prefix(model)
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    assert not can_share_prefix(model)
    assert not can_share_prefix(_NoKeep(model))


def test_micro_batches_share_the_prefix_of_their_rows():
    from searche1.scoring import MIN_SHARED_PREFIX as M, micro_batches

    inst = list(range(100, 100 + M + 4))  # the instructions every prompt starts with
    a, b, c = inst + [1, 2], inst + [3, 4, 5], [7] * (M + 8)
    prompts = [a] * 5 + [b] * 5 + [c] + [a] * 2
    plain = [([0, 1, 2, 3], 0), ([4, 5, 6, 7], 0), ([8, 9, 10, 11], 0), ([12], 0)]
    assert micro_batches(prompts, 4, share=False) == plain
    assert micro_batches(prompts, 4, share=True) == [
        ([0, 1, 2, 3], len(a) - 1),  # one group: its whole prompt but the last token (each row keeps one)
        ([4, 5, 6, 7], len(inst)),  # two groups: the instructions
        ([8, 9, 10, 11], 0),  # a prompt that shares nothing with the others
        ([12], 0),  # a single row: nothing to share
    ]
    assert micro_batches(prompts, 8, share=True)[0] == (list(range(8)), len(inst))  # the size asked for, always
    assert micro_batches([a[:M], a[:M] + [9]], 4, share=True) == [([0, 1], 0)]  # under MIN_SHARED_PREFIX: not worth it
    assert micro_batches([], 4, share=True) == [] == micro_batches([], 4, share=False)


def test_columns_of_padding_only_are_not_run(model):
    ids, attn, mask = _batch(model.config.vocab_size)
    pad = 7  # a micro-batch padded to a longer batch's width
    wide = (torch.cat([ids, torch.zeros(3, pad, dtype=ids.dtype)], 1), torch.cat([attn, torch.zeros(3, pad,
            dtype=attn.dtype)], 1), torch.cat([mask, torch.zeros(3, pad)], 1))
    widths = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, i, o: widths.append(i[0].shape[1]))
    with torch.no_grad():
        got = masked_logprobs(model, *wide)
        ref = masked_logprobs(model, ids, attn, mask)
    hook.remove()
    assert widths == [ids.shape[1]] * 2 and got.shape == wide[2].shape
    assert torch.equal(got[:, :mask.shape[1]], ref) and torch.all(got[:, mask.shape[1]:] == 0)
