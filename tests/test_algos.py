"""searche1.algos: advantages, clipped surrogate losses, k3 KL and token log-probs against naive loops and hand values."""

from __future__ import annotations

import math

import pytest
import torch

from searche1.algos import (
    ADVANTAGES,
    AGGREGATIONS,
    POLICY_LOSSES,
    REF_KL,
    get_advantage,
    get_policy_loss,
    get_ref_kl,
    group_advantages,
    k3_per_token,
    kl_k3,
    masked_aggregate,
    policy_loss,
    token_logprobs,
    truncated_is_weights,
)
from searche1.errors import ConfigError

SEEDS = [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------------ naive references


def naive_advantages(rewards: list[float], gids: list[int], scale: bool, eps: float, unbiased: bool) -> list[float]:
    out = []
    for i, r in enumerate(rewards):
        grp = [rewards[j] for j in range(len(rewards)) if gids[j] == gids[i]]
        m = sum(grp) / len(grp)
        dof = len(grp) - 1 if unbiased else len(grp)
        std = math.sqrt(sum((x - m) ** 2 for x in grp) / dof) if dof > 0 else 0.0
        out.append((r - m) / (std + eps) if scale else r - m)
    return out


def naive_reduce(terms: list[list[float | None]], agg: str, max_len: int | None) -> float:
    """``terms[b][t]`` is the per-token value or None where masked."""
    if agg == "token_mean":
        vals = [v for row in terms for v in row if v is not None]
        return sum(vals) / max(1, len(vals))
    if agg == "seq_mean_token_mean":
        means = []
        for row in terms:
            vals = [v for v in row if v is not None]
            if vals:
                means.append(sum(vals) / len(vals))
        return sum(means) / max(1, len(means))
    assert agg == "dr_grpo"
    vals = [v for row in terms for v in row if v is not None]
    return sum(vals) / (len(terms) * max_len)


def naive_policy_loss(logp, old, adv, mask, clip_low, clip_high, agg, max_len, weights=None) -> float:
    terms = []
    for b in range(len(logp)):
        row = []
        for t in range(len(logp[b])):
            if mask[b][t] == 0:
                row.append(None)
                continue
            rho = math.exp(logp[b][t] - old[b][t])
            a = adv[b]
            w = 1.0 if weights is None else weights[b][t]
            row.append(-w * min(rho * a, min(max(rho, 1 - clip_low), 1 + clip_high) * a))
        terms.append(row)
    return naive_reduce(terms, agg, max_len)


def naive_k3(logp, ref, mask, agg, max_len) -> float:
    terms = []
    for b in range(len(logp)):
        row = []
        for t in range(len(logp[b])):
            if mask[b][t] == 0:
                row.append(None)
            else:
                d = ref[b][t] - logp[b][t]
                row.append(math.exp(d) - d - 1)
        terms.append(row)
    return naive_reduce(terms, agg, max_len)


def random_batch(seed: int, b: int = 5, t: int = 7):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3  # (B, T)
    logp = old + 0.4 * torch.randn(b, t, generator=g, dtype=torch.float64)  # ratios around [0.5, 2]
    adv = torch.randn(b, generator=g, dtype=torch.float64)  # (B,)
    mask = (torch.rand(b, t, generator=g) > 0.3).long()  # (B, T)
    mask[0] = 0  # a fully masked row
    mask[1, :] = 1
    mask[1, t // 2] = 0  # a hole in the middle (retrieved tokens)
    old = torch.where(mask == 0, torch.full_like(old, float("nan")), old)  # garbage where masked must not leak
    return logp, old, adv, mask


# ------------------------------------------------------------------------------------------------ advantages


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("unbiased", [True, False])
def test_group_advantages_match_naive_loop_with_group_ids(seed, scale, unbiased):
    g = torch.Generator().manual_seed(seed)
    n = 13
    rewards = (torch.rand(n, generator=g) > 0.5).float()
    rewards[:3] = torch.rand(3, generator=g)  # some non-binary rewards
    gids = torch.randint(10, 14, (n,), generator=g)  # arbitrary ids, shuffled, some groups may be singletons
    adv, m = group_advantages(rewards, gids, scale=scale, eps=1e-6, unbiased=unbiased)
    ref = naive_advantages(rewards.tolist(), gids.tolist(), scale, 1e-6, unbiased)
    assert adv.shape == (n,)
    torch.testing.assert_close(adv, torch.tensor(ref, dtype=torch.float32), atol=1e-4, rtol=1e-4)
    groups = {}
    for r, k in zip(rewards.tolist(), gids.tolist()):
        groups.setdefault(k, []).append(r)
    assert m["grpo/zero_std_groups"] == pytest.approx(sum(max(v) == min(v) for v in groups.values()) / len(groups))
    assert m["grpo/reward_mean"] == pytest.approx(rewards.mean().item())
    assert m["grpo/adv_abs_mean"] == pytest.approx(sum(abs(a) for a in ref) / n, rel=1e-4)
    assert m["grpo/num_groups"] == len(groups)


@pytest.mark.parametrize("seed", SEEDS)
def test_group_size_equals_contiguous_group_ids(seed):
    rewards = torch.rand(12, generator=torch.Generator().manual_seed(seed))
    a1, m1 = group_advantages(rewards, 4)
    a2, m2 = group_advantages(rewards, torch.arange(12) // 4)
    torch.testing.assert_close(a1, a2)
    assert m1 == m2
    # registry functions are the same maths
    torch.testing.assert_close(get_advantage("grpo")(rewards, 4)[0], a1)
    torch.testing.assert_close(get_advantage("no_std")(rewards, 4)[0], group_advantages(rewards, 4, scale=False)[0])


def test_group_advantages_hand_computed():
    # group 1: [1, 0, 0, 1] mean 0.5, sample std sqrt(4 * 0.25 / 3) = 0.5773503 -> A = ±0.5 / (0.5773503 + 1e-6)
    # group 2: [1, 1, 1, 1] all equal -> A = 0 exactly
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv, m = group_advantages(rewards, 4)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)  # 0.8660239
    torch.testing.assert_close(adv, torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0]))
    assert adv[4:].eq(0).all()
    assert m["grpo/zero_std_groups"] == 0.5
    assert m["grpo/reward_mean"] == 0.75
    assert m["grpo/adv_abs_mean"] == pytest.approx(4 * 0.8660239 / 8, rel=1e-6)
    # Dr. GRPO (no std): r - mean
    adv0, _ = group_advantages(rewards, 4, scale=False)
    torch.testing.assert_close(adv0, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]))
    # population std: sqrt(0.25) = 0.5 -> A = ±0.5 / 0.500001
    advp, _ = group_advantages(rewards, 4, unbiased=False)
    torch.testing.assert_close(advp[:4], torch.tensor([1.0, -1.0, -1.0, 1.0]) * (0.5 / 0.500001))


def test_group_advantages_edge_cases():
    # constant non-representable float rewards: exactly 0, singleton groups: 0, never NaN
    adv, m = group_advantages(torch.tensor([0.1, 0.1, 0.1, 0.7]), torch.tensor([0, 0, 0, 1]))
    assert adv.eq(0).all() and m["grpo/zero_std_groups"] == 1.0
    with pytest.raises(ConfigError, match="group_size=3"):
        group_advantages(torch.zeros(8), 3)
    adv, _ = group_advantages(torch.tensor([1, 0, 1, 1]), 2)  # int rewards are fine
    assert adv.dtype == torch.float32 and not adv.isnan().any()


# ------------------------------------------------------------------------------------------------ policy losses


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
@pytest.mark.parametrize("clips", [(0.2, 0.2), (0.1, 0.28)])
def test_policy_loss_matches_naive_loop(seed, agg, clips):
    logp, old, adv, mask = random_batch(seed)
    max_len = 9
    loss, m = get_policy_loss(agg)(logp, old, adv, mask, clip_low=clips[0], clip_high=clips[1], max_len=max_len)
    ref = naive_policy_loss(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), *clips, agg, max_len)
    assert loss.item() == pytest.approx(ref, rel=1e-9, abs=1e-12)
    loss2, _ = policy_loss(logp, old, adv, mask, clip_low=clips[0], clip_high=clips[1], agg=agg, max_len=max_len)
    assert loss2.item() == loss.item()
    assert m["loss/num_tokens"] == mask.sum().item()
    assert 0 <= m["loss/clip_frac"] <= 1 and m["loss/approx_kl"] >= 0 and not math.isnan(m["loss/ratio_mean"])


def naive_is_weights(old, sampler, mask, cap):
    """min(exp(old - sampler), cap) per policy token, 1 elsewhere; the mean weight, capped share and largest ratio."""
    w, kept, capped, top = [], [], 0, 0.0
    for b in range(len(old)):
        row = []
        for t in range(len(old[b])):
            if mask[b][t] == 0:
                row.append(1.0)
                continue
            r = math.exp(old[b][t] - sampler[b][t])
            row.append(min(r, cap))
            kept.append(row[-1])
            capped += r > cap
            top = max(top, r)
        w.append(row)
    return w, sum(kept) / max(1, len(kept)), capped / max(1, len(kept)), top


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cap", [0.9, 1.5, 1e6])
def test_truncated_is_weights_match_naive_loop(seed, cap):
    logp, old, _, mask = random_batch(seed)  # logp plays the trainer's "old", old the sampler's (NaN where masked)
    w, m = truncated_is_weights(logp, old, mask, cap)
    ref, mean, capped, top = naive_is_weights(logp.tolist(), old.tolist(), mask.tolist(), cap)
    assert torch.allclose(w, torch.tensor(ref, dtype=w.dtype), rtol=1e-12)
    assert m["loss/is_weight_mean"] == pytest.approx(mean, rel=1e-12)
    assert m["loss/is_capped_frac"] == pytest.approx(capped)
    assert m["loss/is_ratio_max"] == pytest.approx(top, rel=1e-12)
    assert (capped > 0) == (cap < 2)  # the batch's ratios span about [0.5, 2]: the test reaches both branches
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_is_weights(logp, old, mask, 0.0)
    with pytest.raises(ValueError, match="must all be"):
        truncated_is_weights(logp, old[:, 1:], mask, 2.0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
def test_policy_loss_with_importance_weights_matches_naive_loop(seed, agg):
    """Per-token weights multiply each token's surrogate before the reduction and pass no gradient."""
    logp, old, adv, mask = random_batch(seed)
    g = torch.Generator().manual_seed(seed + 100)
    w = (0.5 + torch.rand(mask.shape, generator=g, dtype=torch.float64)).requires_grad_(True)
    lp = logp.clone().requires_grad_(True)
    loss, _ = get_policy_loss(agg)(lp, old, adv, mask, max_len=9, is_weight=w)
    ref = naive_policy_loss(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.2, agg, 9, w.tolist())
    assert loss.item() == pytest.approx(ref, rel=1e-9, abs=1e-12)
    loss.backward()
    assert w.grad is None and lp.grad is not None
    # all weights equal to c: the loss and its gradient scale by c
    plain = logp.clone().requires_grad_(True)
    base, _ = get_policy_loss(agg)(plain, old, adv, mask, max_len=9)
    base.backward()
    lp2 = logp.clone().requires_grad_(True)
    scaled, _ = get_policy_loss(agg)(lp2, old, adv, mask, max_len=9, is_weight=torch.full_like(logp, 0.25))
    scaled.backward()
    assert scaled.item() == pytest.approx(0.25 * base.item(), rel=1e-12, abs=1e-15)
    assert torch.allclose(lp2.grad, 0.25 * plain.grad, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="is_weight must be"):
        policy_loss(logp, old, adv, mask, is_weight=w[:, 1:])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
def test_masked_tokens_get_exactly_zero_gradient(seed, agg):
    logp, old, adv, mask = random_batch(seed)
    logp = logp.clone().float().requires_grad_(True)
    loss, _ = policy_loss(logp, old.float(), adv.float(), mask, agg=agg, max_len=9)
    loss.backward()
    assert torch.isfinite(loss)
    assert (logp.grad[mask == 0] == 0.0).all()
    assert logp.grad[mask == 1].abs().sum() > 0
    logp.grad = None
    kl, _ = kl_k3(logp, torch.where(mask == 0, float("nan"), old.float()), mask, agg=agg, max_len=9)
    kl.backward()
    assert torch.isfinite(kl) and (logp.grad[mask == 0] == 0.0).all()


def test_policy_loss_hand_computed_clipping():
    # ratios 1.5, 1.0, 0.5 with eps 0.2; A = +1: -[min(1.5,1.2), 1, min(0.5,0.8)] = -[1.2, 1.0, 0.5] -> mean -0.9
    logp = torch.log(torch.tensor([[1.5, 1.0, 0.5]]))
    old = torch.zeros(1, 3)
    mask = torch.ones(1, 3)
    loss, m = policy_loss(logp, old, torch.tensor([1.0]), mask)
    assert loss.item() == pytest.approx(-0.9)
    assert m["loss/clip_frac"] == pytest.approx(1 / 3) and m["loss/clip_frac_high"] == pytest.approx(1 / 3)
    assert m["loss/clip_frac_low"] == 0.0
    assert m["loss/ratio_mean"] == pytest.approx(1.0) and m["loss/ratio_max"] == pytest.approx(1.5)
    # k3 of KL(old||new): (rho-1) - log rho = [0.5-0.405465, 0, -0.5+0.693147] -> mean 0.262561 / 1 ... / 3
    assert m["loss/approx_kl"] == pytest.approx((0.5 - math.log(1.5) + (-0.5 - math.log(0.5))) / 3)
    # A = -1: -[min(-1.5,-1.2), -1, min(-0.5,-0.8)] = [1.5, 1.0, 0.8] -> mean 1.1
    loss, m = policy_loss(logp, old, torch.tensor([-1.0]), mask)
    assert loss.item() == pytest.approx(1.1)
    assert m["loss/clip_frac_low"] == pytest.approx(1 / 3) and m["loss/clip_frac_high"] == 0.0


def test_policy_loss_hand_computed_aggregations():
    # ratio 1 everywhere, mask [[1,1,0],[1,0,0]], A = [1, -3]: per-token loss [[-1,-1,.],[3,.,.]]
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([1.0, -3.0])
    assert policy_loss(logp, logp, adv, mask, agg="token_mean")[0].item() == pytest.approx(1 / 3)  # (-1-1+3)/3
    assert policy_loss(logp, logp, adv, mask, agg="seq_mean_token_mean")[0].item() == pytest.approx(1.0)  # (-1+3)/2
    assert policy_loss(logp, logp, adv, mask, agg="dr_grpo", max_len=4)[0].item() == pytest.approx(0.125)  # 1/(2*4)
    with pytest.raises(ConfigError, match="max_len"):
        policy_loss(logp, logp, adv, mask, agg="dr_grpo")


@pytest.mark.parametrize("seed", SEEDS)
def test_ratio_one_no_clipping_is_minus_token_mean_of_advantage(seed):
    _, old, adv, mask = random_batch(seed)
    old = torch.nan_to_num(old)
    loss, m = policy_loss(old.clone(), old, adv, mask)
    per_seq_tokens = mask.sum(1).double()
    expected = -(adv * per_seq_tokens).sum() / per_seq_tokens.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert m["loss/clip_frac"] == 0.0 and m["loss/ratio_mean"] == 1.0 and m["loss/approx_kl"] == 0.0


@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
def test_gradient_direction_one_sgd_step(agg):
    old = torch.log(torch.tensor([[0.3, 0.5, 0.2], [0.4, 0.1, 0.6]]))
    logp = torch.nn.Parameter(old.clone())
    mask = torch.tensor([[1, 0, 1], [1, 1, 1]])
    adv = torch.tensor([1.5, -0.7])
    opt = torch.optim.SGD([logp], lr=0.1)
    loss, _ = policy_loss(logp, old, adv, mask, agg=agg, max_len=3)
    loss.backward()
    opt.step()
    delta = (logp.detach() - old)
    assert (delta[0, [0, 2]] > 0).all()  # positive advantage: more likely
    assert (delta[1] < 0).all()  # negative advantage: less likely
    assert delta[0, 1] == 0.0  # masked: untouched


def test_clipped_side_has_zero_gradient():
    # rho = 1.5 > 1.2: A > 0 clipped (no grad), A < 0 not clipped (grad); rho = 0.5 < 0.8: the reverse
    old = torch.zeros(4, 1)
    logp = torch.log(torch.tensor([[1.5], [1.5], [0.5], [0.5]])).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, m = policy_loss(logp, old, adv, torch.ones(4, 1))
    loss.backward()
    g = logp.grad[:, 0]
    assert g[0] == 0.0 and g[3] == 0.0  # clipped side
    assert g[1] > 0 and g[2] < 0  # unclipped side still pushes (SGD: logp -= lr * g)
    assert m["loss/clip_frac"] == 0.5
    # the unclipped gradients are -rho * A / n_tokens
    torch.testing.assert_close(g[1:3], torch.tensor([1.5 / 4, -0.5 / 4]))


def test_extreme_log_ratio_stays_finite():
    logp = torch.tensor([[50.0, -50.0]], requires_grad=True)
    loss, _ = policy_loss(logp, torch.zeros(1, 2), torch.tensor([-1.0]), torch.ones(1, 2))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()


@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
def test_denom_makes_micro_batches_add_up(agg):
    logp, old, adv, mask = random_batch(7, b=6)
    full, _ = policy_loss(logp, old, adv, mask, agg=agg, max_len=9)
    if agg == "token_mean":
        denom = mask.sum().item()
    elif agg == "seq_mean_token_mean":
        denom = (mask.sum(1) > 0).sum().item()
    else:
        denom = 6 * 9
    parts = sum(policy_loss(logp[i:i + 2], old[i:i + 2], adv[i:i + 2], mask[i:i + 2], agg=agg, denom=denom)[0]
                for i in range(0, 6, 2))
    assert parts.item() == pytest.approx(full.item(), rel=1e-12)


def test_all_masked_batch_is_zero_not_nan():
    logp = torch.zeros(2, 3, requires_grad=True)
    for agg in AGGREGATIONS:
        loss, m = policy_loss(logp, torch.zeros(2, 3), torch.ones(2), torch.zeros(2, 3), agg=agg, max_len=3)
        assert loss.item() == 0.0 and m["loss/num_tokens"] == 0.0
        loss.backward()
        assert (logp.grad == 0).all()


# ------------------------------------------------------------------------------------------------ registries


def test_registries_fail_listing_valid_names():
    assert set(POLICY_LOSSES) == {"token_mean", "seq_mean_token_mean", "dr_grpo"}
    assert set(ADVANTAGES) == {"grpo", "no_std"}
    assert set(REF_KL) == {"k3"}
    with pytest.raises(ConfigError, match="dr_grpo, seq_mean_token_mean, token_mean"):
        get_policy_loss("seq_mean")
    with pytest.raises(ValueError, match="grpo, no_std"):
        get_advantage("rloo")
    with pytest.raises(ConfigError, match="k3"):
        get_ref_kl("k2")
    with pytest.raises(ConfigError, match="token_mean"):
        policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1), agg="mean")
    with pytest.raises(ConfigError, match="token_mean"):
        masked_aggregate(torch.zeros(1, 1), torch.ones(1, 1), "sum")


# ------------------------------------------------------------------------------------------------ KL and log-probs


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
def test_k3_matches_naive_loop(seed, agg):
    logp, ref, _, mask = random_batch(seed)
    kl, m = get_ref_kl("k3")(logp, ref, mask, agg=agg, max_len=9)
    expected = naive_k3(logp.tolist(), ref.tolist(), mask.tolist(), agg, 9)
    assert kl.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert m["loss/kl_ref"] == pytest.approx(kl.item())


@pytest.mark.parametrize("seed", SEEDS)
def test_k3_nonnegative_and_zero_at_reference(seed):
    g = torch.Generator().manual_seed(seed)
    logp = -3 * torch.rand(4, 6, generator=g)
    ref = logp + 2 * torch.randn(4, 6, generator=g)
    assert (k3_per_token(logp, ref) >= 0).all()
    kl, _ = kl_k3(logp, logp.clone(), torch.ones(4, 6))
    assert kl.item() == 0.0


def test_k3_hand_computed():
    # d = ref - logp = ln2 -> 2 - ln2 - 1 = 0.3068528; d = -ln2 -> 0.5 + ln2 - 1 = 0.1931472; mean 0.25
    logp = torch.tensor([[0.0, 0.0, 5.0]])
    ref = torch.tensor([[math.log(2), -math.log(2), -9.0]])
    kl, m = kl_k3(logp, ref, torch.tensor([[1, 1, 0]]))
    assert kl.item() == pytest.approx(0.25)
    assert k3_per_token(logp, ref)[0, 0].item() == pytest.approx(0.3068528)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_elems", [1, 37, 1 << 26])  # 1 row per block, a few rows, everything at once
def test_token_logprobs_equals_log_softmax_gather(seed, dtype, block_elems):
    g = torch.Generator().manual_seed(seed)
    full = (4 * torch.randn(3, 6, 11, generator=g)).to(dtype)  # (B, T+1, V)
    ids = torch.randint(0, 11, (3, 5), generator=g)  # (B, T)
    logits = full[:, :-1]  # non-contiguous view, like a shifted model output
    a = logits.detach().clone().requires_grad_(True)
    b = logits.detach().clone().requires_grad_(True)
    out = token_logprobs(a, ids, block_elems=block_elems)
    ref = torch.log_softmax(b.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    assert out.dtype == torch.float32 and out.shape == (3, 5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    w = torch.randn(3, 5, generator=g)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    assert a.grad.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(a.grad.float(), b.grad.float(), atol=tol, rtol=tol)
    # against bf16-native log_softmax as well (what a naive caller would write), loosely
    native = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1).float()
    torch.testing.assert_close(out, native, atol=0.1 if dtype == torch.bfloat16 else 1e-5, rtol=0.05)
    assert logits.eq(full[:, :-1]).all()  # the input was not modified in place


def test_token_logprobs_hand_computed_and_temperature_gradcheck():
    logits = torch.tensor([[0.0, math.log(3)]])  # probs [1/4, 3/4]
    out = token_logprobs(logits, torch.tensor([1]))
    assert out.shape == (1,) and out.item() == pytest.approx(math.log(0.75))
    assert token_logprobs(logits, torch.tensor([0])).item() == pytest.approx(math.log(0.25))
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[0, 4, 2], [1, 1, 3]])
    for temp in (1.0, 0.7):
        assert torch.autograd.gradcheck(lambda z: token_logprobs(z, ids, temperature=temp, block_elems=10), (x,))
        ref = torch.log_softmax(x / temp, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(token_logprobs(x, ids, temperature=temp), ref)
    with pytest.raises(ConfigError, match="temperature"):
        token_logprobs(x, ids, temperature=0.0)
