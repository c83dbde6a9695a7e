"""The policy update with the LM head only at policy-token columns (searche1.scoring) against full logits, on CPU.

A GRPO update runs a forward and a backward over whole episodes (prompt, turns, retrieved passages), but its loss
needs log-probs at the policy's own tokens only; :func:`searche1.scoring.masked_logprobs` computes the vocabulary
projection and log-softmax at the columns where some row of the micro-batch has one. This script rolls out the
demo's GRPO batch (4 training questions × G = 5, the demo's rollout settings, seeded) with the HF engine, then times
one pass of the update over it (micro-batches of 4: forward, policy-gradient loss, backward) both ways, alternating,
and compares the medians. Two models: the demo's (only the last 10 of 30 layers train) and a full fine-tune. The
gradients of the two ways must agree (reported: the largest difference relative to the gradient's largest entry).
The warm-up's loss is the same computation (cross-entropy of the policy tokens). Writes
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
    from searche1.scoring import kept_columns, masked_logprobs
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
    slices = [slice(s, s + mb) for s in range(0, len(eps), mb)]
    kept = sum(len(kept_columns(mask[sl])) for sl in slices)
    cols = sum(int(attn[sl].sum(-1).max()) - 1 for sl in slices)

    def update(masked: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        for sl in slices:
            if masked:
                logp = masked_logprobs(model, ids[sl], attn[sl], mask[sl])
            else:
                logits = model(input_ids=ids[sl], attention_mask=attn[sl]).logits
                logp = token_logprobs(logits[:, :-1], ids[sl, 1:]) * mask[sl]
            (-(logp * adv[sl]).sum() / mask.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    results: dict = {
        "model": str(args.model), "repeats": args.repeats, "threads": args.threads, "micro_batch": mb,
        "episodes": len(eps), "tokens": int(attn.sum()), "policy_tokens": int(mask.sum()),
        "searches": rnd(sum(e.searches for e in eps) / len(eps), 2),
        "lm_head_columns": {"full": cols, "masked": kept}, "shapes": {},
    }
    rows = []
    n_layers = len(model.model.layers)
    for name, train_layers in (("demo (last 10 layers train)", 10), ("full fine-tune", 0)):
        first = n_layers - train_layers if train_layers else 0
        for n, p in model.named_parameters():
            layer = int(n.split(".")[2]) if n.startswith("model.layers.") else None
            p.requires_grad_(layer is None or layer >= first)
        model.train()
        times: dict[bool, list[float]] = {True: [], False: []}
        grads: dict[bool, dict] = {}
        for r in range(args.repeats):
            for masked in (True, False):
                log(f"{name}: {'masked' if masked else 'full'} logits, repeat {r + 1}/{args.repeats}")
                times[masked].append(time_call(lambda: grads.__setitem__(masked, update(masked))))
        scale = max(float(g.abs().max()) for g in grads[False].values())
        diff = max(float((grads[True][n] - g).abs().max()) for n, g in grads[False].items()) / scale
        med = {k: statistics.median(v) for k, v in times.items()}
        results["shapes"][name] = {
            "seconds_masked": [rnd(t, 2) for t in times[True]], "seconds_full": [rnd(t, 2) for t in times[False]],
            "median_masked_s": rnd(med[True], 2), "median_full_s": rnd(med[False], 2),
            "speedup": rnd(med[False] / med[True], 3), "max_grad_diff_rel": rnd(diff, 9),
        }
        rows.append([name, rnd(med[False], 1), rnd(med[True], 1), rnd(med[False] / med[True], 2), f"{diff:.1e}"])
        write_results(RESULTS_DIR / "train_logits.json", results, packages=("torch", "transformers"))
    print_table("GRPO update: LM head at policy-token columns vs full logits (CPU)",
                ["model", "full logits s", "policy columns s", "speed-up", "max grad diff (rel.)"], rows,
                note=f"the demo's GRPO batch: {len(eps)} episodes, {int(attn.sum())} tokens of which "
                     f"{int(mask.sum())} policy tokens; LM head columns {cols} → {kept} over {len(slices)} "
                     f"micro-batches of {mb}; medians of {args.repeats} alternating runs; {args.threads} threads")


if __name__ == "__main__":
    main()
