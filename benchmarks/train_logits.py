"""The policy update's three ways of scoring the episodes, on CPU: full logits (the trainer until 2026-11-28), the
LM head at policy-token columns only (each micro-batch cut to its longest row), and that plus a group's prompt run
once per micro-batch (the trainer now).

A GRPO update runs a forward and a backward over whole episodes (prompt, turns, retrieved passages), but its loss
needs log-probs at the policy's own tokens only (:func:`searche1.scoring.masked_logprobs` computes the vocabulary
projection and log-softmax at the columns where some row of the micro-batch has one), and the G rollouts of a group
share their prompt (``prefix``: run once, its KV cache repeated; :func:`searche1.scoring.micro_batches` cuts the
micro-batches along groups; every micro-batch is cut to its longest row). This script rolls out the demo's GRPO batch
(4 training questions × G = 5, the demo's rollout settings, seeded) with the HF engine, then times one pass of the
update over it (micro-batches of 4: forward, policy-gradient loss, backward) the three ways, alternating, and
compares the medians. Two models: the demo's (only the last 10 of 30 layers train) and a full fine-tune. The
gradients must agree (reported: the largest difference to full logits relative to the gradient's largest entry).
The warm-up's loss is the second way (its demonstrations are distinct questions). Writes
benchmarks/results/train_logits.json.

    python benchmarks/train_logits.py [--model runs/warmup-smollm2] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS_DIR,
    add_engine_args,
    load_engine_model,
    log,
    print_table,
    rnd,
    searchqa_rollouts,
    time_call,
    write_results,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_args(ap)
    ap.add_argument("--micro-batch", type=int, default=4)
    args = ap.parse_args()

    import torch

    from searche1.algos import token_logprobs
    from searche1.demo import DemoConfig
    from searche1.rollout.hf_engine import HFEngine
    from searche1.scoring import kept_columns, masked_logprobs, micro_batches
    from searche1.train import episode_tensors

    tok, model = load_engine_model(args)
    retriever, train, _dev = searchqa_rollouts(args)
    demo = DemoConfig()
    G = demo.grpo.group_size
    exs = [q for q in train[:demo.grpo.questions_per_step] for _ in range(G)]
    log(f"rolling out {len(exs)} episodes")
    eps = HFEngine(model, tok, retriever, replace(demo.rollout, batch_size=len(exs))).run(exs, seed=0)
    ids, attn, mask, _old = episode_tensors(eps, tok.pad_token_id)
    adv = torch.randn(len(eps), 1, generator=torch.Generator().manual_seed(0))
    mb = args.micro_batch
    plain = micro_batches([e.prompt_ids for e in eps], mb, share=False)
    shared = micro_batches([e.prompt_ids for e in eps], mb, share=True)
    T = ids.shape[1]

    def update(mode: str) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        for rows, prefix in shared if mode == "shared" else plain:
            b_ids, b_attn, b_mask = ids[rows], attn[rows], mask[rows]  # (masked_logprobs cuts trailing padding)
            if mode == "full":
                logits = model(input_ids=b_ids, attention_mask=b_attn).logits
                logp = token_logprobs(logits[:, :-1], b_ids[:, 1:]) * b_mask
            else:
                logp = masked_logprobs(model, b_ids, b_attn, b_mask, prefix=prefix if mode == "shared" else 0)
            (-(logp * adv[rows]).sum() / mask.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def tokens_run(mode: str) -> int:  # tokens through the body of the model in one pass
        if mode == "full":
            return len(eps) * T
        return sum(len(rows) * (int(attn[rows].sum(-1).max()) - prefix) + prefix
                   for rows, prefix in (shared if mode == "shared" else plain))

    modes = ("full", "columns", "shared")
    results: dict = {
        "model": str(args.model), "repeats": args.repeats, "threads": args.threads, "micro_batch": mb,
        "episodes": len(eps), "tokens": int(attn.sum()), "policy_tokens": int(mask.sum()),
        "searches": rnd(sum(e.searches for e in eps) / len(eps), 2),
        "lm_head_columns": {"full": len(plain) * (T - 1), "columns": sum(len(kept_columns(mask[r])) for r, _ in plain)},
        "tokens_run": {m: tokens_run(m) for m in modes}, "shared_micro_batches": [len(r) for r, _ in shared],
        "shapes": {},
    }
    rows = []
    n_layers = len(model.model.layers)
    for name, train_layers in (("demo (last 10 layers train)", 10), ("full fine-tune", 0)):
        first = n_layers - train_layers if train_layers else 0
        for n, p in model.named_parameters():
            layer = int(n.split(".")[2]) if n.startswith("model.layers.") else None
            p.requires_grad_(layer is None or layer >= first)
        model.train()
        times: dict[str, list[float]] = {m: [] for m in modes}
        grads: dict[str, dict] = {}
        for r in range(args.repeats):
            for mode in modes:
                log(f"{name}: {mode}, repeat {r + 1}/{args.repeats}")
                times[mode].append(time_call(lambda: grads.__setitem__(mode, update(mode))))
        scale = max(float(g.abs().max()) for g in grads["full"].values())
        diff = {m: max(float((grads[m][n] - g).abs().max()) for n, g in grads["full"].items()) / scale
                for m in modes[1:]}
        med = {k: statistics.median(v) for k, v in times.items()}
        results["shapes"][name] = {
            **{f"seconds_{m}": [rnd(t, 2) for t in times[m]] for m in modes},
            **{f"median_{m}_s": rnd(med[m], 2) for m in modes},
            **{f"speedup_{m}": rnd(med["full"] / med[m], 3) for m in modes[1:]},
            **{f"max_grad_diff_rel_{m}": rnd(diff[m], 9) for m in modes[1:]},
        }
        rows.append([name, rnd(med["full"], 1), rnd(med["columns"], 1), rnd(med["shared"], 1),
                     rnd(med["full"] / med["columns"], 2), rnd(med["full"] / med["shared"], 2),
                     f"{max(diff.values()):.1e}"])
        write_results(RESULTS_DIR / "train_logits.json", results, packages=("torch", "transformers"))
    print_table("GRPO update: full logits vs LM head at policy columns vs + shared prompt (CPU)",
                ["model", "full logits s", "policy columns s", "+ shared prompt s", "speed-up columns",
                 "speed-up both", "max grad diff (rel.)"], rows,
                note=f"the demo's GRPO batch: {len(eps)} episodes, {int(attn.sum())} tokens of which "
                     f"{int(mask.sum())} policy tokens; tokens through the model per pass "
                     f"{results['tokens_run']['full']} → {results['tokens_run']['shared']}; LM head columns "
                     f"{results['lm_head_columns']['full']} → {results['lm_head_columns']['columns']}; micro-batches "
                     f"of ≤ {mb}; medians of {args.repeats} alternating runs; {args.threads} threads")


if __name__ == "__main__":
    main()
