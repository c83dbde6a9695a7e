"""The policy update's ways of scoring the episodes, on CPU, and the warm-up's with and without its shared prefix.

A GRPO update runs a forward and a backward over whole episodes (prompt, turns, retrieved passages), but its loss
needs log-probs at the policy's own tokens only (:func:`searche1.scoring.masked_logprobs` computes the vocabulary
projection and log-softmax at the columns where some row of the micro-batch has one), and the rows of a micro-batch
share the start of their prompts (``prefix``: run once, its KV cache repeated). This script rolls out the demo's
GRPO batch (4 training questions × G = 5, the demo's rollout settings, seeded) with the HF engine, then times one
pass of the update over it (micro-batches of 4: forward, policy-gradient loss, backward) four ways, alternating:

* ``full``: full logits, every micro-batch padded to the batch's longest episode (the trainer until 2026-11-28);
* ``columns``: the LM head at policy-token columns only, each micro-batch cut to its longest row;
* ``groups``: that, with micro-batches cut along GRPO groups (a group of 5 → 2 + 3 rows) and each group's prompt
  run once (the trainer of commit ba30e93);
* ``shared``: that, with micro-batches of the size asked for and the prefix their rows share run once (the whole
  prompt within a group, the instructions across groups: :func:`searche1.scoring.micro_batches`, the trainer now).

Two models: the demo's (only the last 10 of 30 layers train) and a full fine-tune. The gradients must agree
(reported: the largest difference to full logits relative to the gradient's largest entry). Then the warm-up
(``--warmup-demos`` of the demo's demonstrations, batches of 4, every weight trains as in the demo): its loss with
and without the instructions every prompt starts with run once per batch (``warmup.share_prompt``). Writes
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
    ap.add_argument("--warmup-demos", type=int, default=16)
    args = ap.parse_args()

    import torch

    from searche1.algos import token_logprobs
    from searche1.demo import DemoConfig
    from searche1.rollout.hf_engine import HFEngine
    from searche1.scoring import kept_columns, masked_logprobs, micro_batches, shared_prefix_len
    from searche1.train import episode_tensors
    from searche1.warmup import IGNORE_INDEX, build_demonstrations, collate

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
    prompts = [e.prompt_ids for e in eps]
    plain = micro_batches(prompts, mb, share=False)
    splits = {"full": plain, "columns": plain, "groups": group_micro_batches(prompts, mb),
              "shared": micro_batches(prompts, mb, share=True)}
    T = ids.shape[1]

    def update(mode: str) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        for rows, prefix in splits[mode]:
            b_ids, b_attn, b_mask = ids[rows], attn[rows], mask[rows]  # (masked_logprobs cuts trailing padding)
            if mode == "full":
                logits = model(input_ids=b_ids, attention_mask=b_attn).logits
                logp = token_logprobs(logits[:, :-1], b_ids[:, 1:]) * b_mask
            else:
                logp = masked_logprobs(model, b_ids, b_attn, b_mask, prefix=prefix)
            (-(logp * adv[rows]).sum() / mask.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def tokens_run(mode: str) -> int:  # tokens through the body of the model in one pass
        if mode == "full":
            return len(eps) * T
        return sum(len(rows) * (int(attn[rows].sum(-1).max()) - prefix) + prefix for rows, prefix in splits[mode])

    modes = ("full", "columns", "groups", "shared")
    results: dict = {
        "model": str(args.model), "repeats": args.repeats, "threads": args.threads, "micro_batch": mb,
        "episodes": len(eps), "tokens": int(attn.sum()), "policy_tokens": int(mask.sum()),
        "searches": rnd(sum(e.searches for e in eps) / len(eps), 2),
        "lm_head_columns": {"full": len(plain) * (T - 1), "columns": sum(len(kept_columns(mask[r])) for r, _ in plain)},
        "tokens_run": {m: tokens_run(m) for m in modes}, "micro_batches": {m: [[len(r), p] for r, p in splits[m]] for m in modes[1:]},
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
        rows.append([name, *(rnd(med[m], 1) for m in modes), *(rnd(med["full"] / med[m], 2) for m in modes[1:]),
                     f"{max(diff.values()):.1e}"])
        write_results(RESULTS_DIR / "train_logits.json", results, packages=("torch", "transformers"))
    print_table("GRPO update: full logits vs LM head at policy columns vs + a group's prompt once vs + the shared "
                "prefix once (CPU)",
                ["model", *(f"{m} s" for m in modes), *(f"speed-up {m}" for m in modes[1:]), "max grad diff (rel.)"],
                rows,
                note=f"the demo's GRPO batch: {len(eps)} episodes, {int(attn.sum())} tokens of which "
                     f"{int(mask.sum())} policy tokens; tokens through the model per pass "
                     + " / ".join(str(results["tokens_run"][m]) for m in modes) + "; LM head columns "
                     f"{results['lm_head_columns']['full']} → {results['lm_head_columns']['columns']}; micro-batches "
                     f"of ≤ {mb}; medians of {args.repeats} alternating runs; {args.threads} threads")

    # ---- the warm-up's loss: every weight trains (as in the demo), demonstrations of distinct questions
    for p in model.parameters():
        p.requires_grad_(True)
    demos = build_demonstrations(train[:8 * args.warmup_demos], retriever, tok, demo.rollout,
                                 max_hops=demo.warmup.max_hops)[:args.warmup_demos]
    batches = [demos[s:s + 4] for s in range(0, len(demos), 4)]

    def warmup_pass(share: bool) -> None:
        model.zero_grad(set_to_none=True)
        for batch in batches:
            w_ids, w_attn, labels = collate(batch, tok.pad_token_id)
            on = (labels[:, 1:] != IGNORE_INDEX).float()
            prefix = shared_prefix_len([d.prompt_ids for d in batch]) if share else 0
            logp = masked_logprobs(model, w_ids, w_attn, on, prefix=prefix)
            (-(logp * on).sum() / on.sum()).backward()

    w_times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.repeats):
        for share in (False, True):
            log(f"warm-up, shared prefix {share}, repeat {r + 1}/{args.repeats}")
            w_times[share].append(time_call(lambda: warmup_pass(share)))
    w_med = {k: statistics.median(v) for k, v in w_times.items()}
    prefixes = [shared_prefix_len([d.prompt_ids for d in b]) for b in batches]
    results["warmup"] = {
        "demos": len(demos), "batches": len(batches), "tokens": sum(len(d) for d in demos),
        "policy_tokens": sum(sum(d.policy_mask) for d in demos), "shared_prefixes": prefixes,
        "seconds_plain": [rnd(t, 2) for t in w_times[False]], "seconds_shared": [rnd(t, 2) for t in w_times[True]],
        "median_plain_s": rnd(w_med[False], 2), "median_shared_s": rnd(w_med[True], 2),
        "speedup_shared": rnd(w_med[False] / w_med[True], 3),
    }
    write_results(RESULTS_DIR / "train_logits.json", results, packages=("torch", "transformers"))
    print_table("Warm-up loss (forward + backward, every weight trains): the instructions once per batch (CPU)",
                ["demos", "tokens", "shared prefix", "plain s", "shared s", "speed-up"],
                [[len(demos), results["warmup"]["tokens"], f"{min(prefixes)}–{max(prefixes)}", rnd(w_med[False], 1),
                  rnd(w_med[True], 1), rnd(w_med[False] / w_med[True], 2)]],
                note=f"batches of 4; medians of {args.repeats} alternating runs; {args.threads} threads")


def group_micro_batches(prompts: list[list[int]], micro: int) -> list[tuple[list[int], int]]:
    """The trainer's micro-batches of commit ba30e93: each run of rows with the same prompt (a GRPO group) split as
    evenly as ``micro`` allows, a micro-batch of 2+ rows passing its whole prompt as the shared prefix."""
    out: list[tuple[list[int], int]] = []
    start = 0
    while start < len(prompts):
        end = start + 1
        while end < len(prompts) and prompts[end] == prompts[start]:
            end += 1
        parts = -(-(end - start) // micro)
        for k in range(parts):
            lo, hi = start + (end - start) * k // parts, start + (end - start) * (k + 1) // parts
            out.append((list(range(lo, hi)), len(prompts[start]) if hi - lo > 1 else 0))
        start = end
    return out


if __name__ == "__main__":
    main()
