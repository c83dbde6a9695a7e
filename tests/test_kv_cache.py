"""The growing KV cache (searche1/rollout/kv_cache.py): the same numbers as transformers' DynamicCache, held in a
buffer with spare room; rows selected and repeated as the HF engine does; amortised growth."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer
from transformers import DynamicCache

from searche1.rollout import hf_engine
from searche1.rollout.kv_cache import MIN_SPARE, make_cache

if not hasattr(pytest.importorskip("transformers.cache_utils"), "DynamicLayer"):
    pytest.skip("this transformers has no per-layer cache classes (make_cache gives a plain DynamicCache)",
                allow_module_level=True)


def _kw(model):
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _decode(model, cache, steps: int = 90) -> list[torch.Tensor]:
    """Prefill 3 rows, decode, drop a row, decode, then repeat the rows (as the engine's shared prefix does)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (3, 11), generator=g)
    attn = torch.ones_like(ids)
    attn[1, :4] = 0  # a left-padded row
    kw = {_kw(model): cache}
    out = []
    with torch.no_grad():
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        out.append(model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **kw).logits[:, -1])
        for s in range(steps):
            if s == steps // 2:
                keep = torch.tensor([0, 2])
                cache.batch_select_indices(keep)
                attn = attn[keep]
            if s == 3 * steps // 4:
                cache.batch_repeat_interleave(2)
                attn = attn.repeat_interleave(2, dim=0)
            nxt = torch.randint(5, 200, (attn.shape[0], 1), generator=g)
            attn = torch.cat([attn, torch.ones_like(nxt)], 1)
            pos = attn.sum(-1, keepdim=True) - 1
            out.append(model(input_ids=nxt, attention_mask=attn, position_ids=pos, use_cache=True, **kw).logits[:, -1])
    return out


def test_growing_cache_gives_dynamic_cache_logits():
    tok = tiny_tokenizer()
    model = tiny_model(tok).eval()
    grow = make_cache()
    ref = _decode(model, DynamicCache())
    got = _decode(model, grow)
    assert type(grow.layers[0]).__name__ == "GrowingLayer"  # the growing path really ran
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    assert grow.get_seq_length() == 11 + 90 and grow.layers[0]._bk.shape[-2] > 11 + MIN_SPARE  # it grew


def test_growth_is_amortised_and_views_track_the_length():
    cache = make_cache()
    k = torch.zeros(2, 1, 5, 4)
    cache.update(k, k, 0)
    layer = cache.layers[0]
    buffers = {id(layer._bk)}
    for t in range(1, 301):
        x = torch.full((2, 1, 1, 4), float(t))
        keys, values = cache.update(x, x, 0)
        assert keys.shape == (2, 1, 5 + t, 4) and keys[0, 0, -1, 0].item() == t
        buffers.add(id(layer._bk))
    assert layer._bk.shape[-2] >= 305 and layer._bk.shape[-2] <= 2 * 305 + MIN_SPARE
    assert len(buffers) <= 6  # 69 -> 103 -> 154 -> 231 -> 346: a handful of copies for 300 tokens, not 300
    assert cache.get_seq_length() == 305
    assert torch.equal(layer.keys[1, 0, 5:, 0], torch.arange(1, 301, dtype=torch.float32))


def test_engine_episodes_equal_with_the_plain_dynamic_cache(monkeypatch):
    from tiny import tiny_retriever

    from searche1.data.types import QAExample
    from searche1.rollout.types import RolloutConfig

    tok = tiny_tokenizer()
    model = tiny_model(tok)
    exs = [QAExample(str(i), q, ["x"]) for i, q in enumerate(["Who wrote Hamlet?", "Where is Paris?"] * 3)]
    cfg = RolloutConfig(max_turn_tokens=24, max_total_tokens=1024, batch_size=6, temperature=0.9)
    grown = hf_engine.HFEngine(model, tok, tiny_retriever(), cfg).run(exs, seed=2)
    monkeypatch.setattr(hf_engine, "make_cache", DynamicCache)
    plain = hf_engine.HFEngine(model, tok, tiny_retriever(), cfg).run(exs, seed=2)
    assert [e.response_ids for e in grown] == [e.response_ids for e in plain]
    for a, b in zip(grown, plain):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), rtol=0, atol=1e-6)
