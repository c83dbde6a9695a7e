"""The OFSD distillation loss with logits over the whole response block vs only at policy-token positions, on CPU.

The OFSD loss is a divergence over the whole vocabulary at the student's policy tokens, but a search episode's
response is mostly retrieved passages. :func:`searche1.ofsd.phase.distill_loss` runs the LM head (teacher and
student) only at the response positions where some pair of the micro-batch has a policy token; before 2026-11-28 it
ran it over the whole right-aligned response block (``R_max`` positions) and masked the passages out of the loss.
This script rolls out the demo's GRPO batch (4 training questions × G = 5, the demo's rollout settings, seeded) with
the HF engine, pairs rollouts 1 and 2 of each group with rollout 0 as the teacher's reference (sibling context;
correctness does not matter for the cost), and times one pass of the exact forward-KL loss (teacher forward, student
forward and backward; micro-batches of ``ofsd.micro_batch_size``, the pairs in the order
:func:`searche1.ofsd.phase.distill` visits them in its first epoch) four ways, alternating: ``block``, ``columns``
(``ofsd.share_prompt: false``), ``shared`` (the default since 2026-11-28: columns, and the prompt prefix the
micro-batch's sequences share, the instructions for pairs of distinct questions, run once), and ``grouped`` (the
default since a later 2026-11-28 commit: as ``shared``, with each step's pairs cut into micro-batches in the order
of their teacher prompts, :func:`searche1.ofsd.phase.step_micro_batches`, so one question's two pairs run their
whole prompts once). The losses and gradients must agree. Reported: seconds, LM-head positions, prompt tokens run,
and the fp32 logits held per micro-batch, on SmolLM2 (V = 49,152) and scaled to Qwen2.5's V = 151,936. Writes
benchmarks/results/ofsd_logits.json.

    python benchmarks/ofsd_logits.py [--model runs/warmup-smollm2] [--repeats 3] [--threads 2]
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

QWEN_VOCAB = 151_936


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_args(ap)
    args = ap.parse_args()

    import torch

    from searche1.algos.distill import get_distill_loss
    from searche1.demo import DemoConfig
    from searche1.ofsd import Pair
    import random

    from searche1.ofsd.phase import (
        FrozenTeacher,
        distill_loss,
        epoch_order,
        prepare_pairs,
        response_logits,
        response_mask,
        shared_prompt_len,
        step_micro_batches,
    )
    from searche1.rollout.hf_engine import HFEngine
    from searche1.scoring import kept_columns

    tok, model = load_engine_model(args)
    retriever, train, _dev = searchqa_rollouts(args)
    demo = DemoConfig()
    G, cfg = demo.grpo.group_size, demo.ofsd
    exs = [q for q in train[:demo.grpo.questions_per_step] for _ in range(G)]
    log(f"rolling out {len(exs)} episodes")
    eps = HFEngine(model, tok, retriever, replace(demo.rollout, batch_size=len(exs))).run(exs, seed=0)
    groups = [eps[s:s + G] for s in range(0, len(eps), G)]
    pairs = [Pair(g[0].question, g[0].answers, g[0], g[s], gi, 0, s, g) for gi, g in enumerate(groups) for s in (1, 2)]
    items, _ = prepare_pairs(pairs, tok, context=cfg.context, chat=demo.rollout.chat,
                             max_searches=demo.rollout.max_searches)
    items = [items[j] for j in epoch_order(len(items), cfg.pairs_per_shard, random.Random(0))]  # distill's epoch 0
    mb = cfg.micro_batch_size
    batches = [items[s:s + mb] for s in range(0, len(items), mb)]
    # distill since 2026-11-28: each step's pairs cut into micro-batches in teacher-prompt order
    grouped = [[items[j] for j in ids] for s in range(0, len(items), cfg.pairs_per_step)
               for ids in step_micro_batches(items, range(s, min(s + cfg.pairs_per_step, len(items))), mb, True)]
    teacher = FrozenTeacher(model)
    model.train()
    pad = tok.pad_token_id
    denom = float(sum(it.tokens for it in items))
    loss_fn = get_distill_loss(cfg.loss)

    def block_loss(batch):  # the loss before 2026-11-28: logits over the whole response block
        lens = [it.response_len for it in batch]
        with torch.no_grad():
            t = response_logits(teacher.model, [it.teacher_ids for it in batch], lens, pad, "cpu")
        s = response_logits(model, [it.student_ids for it in batch], lens, pad, "cpu")
        return loss_fn(s, t, response_mask(batch), clip=cfg.clip, beta=cfg.jsd_beta, denom=denom)[0]

    def one_pass(mode: str) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        total = 0.0
        for batch in grouped if mode == "grouped" else batches:
            loss = (block_loss(batch) if mode == "block" else
                    distill_loss(model, batch, replace(cfg, share_prompt=mode != "columns"), pad_id=pad,
                                 teacher=teacher, denom=denom)[0])
            loss.backward()
            total += float(loss.detach())
        return total, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    modes = ("block", "columns", "shared", "grouped")
    times: dict[str, list[float]] = {m: [] for m in modes}
    out: dict[str, tuple] = {}
    for r in range(args.repeats):
        for mode in modes:
            log(f"{mode}, repeat {r + 1}/{args.repeats}")
            times[mode].append(time_call(lambda: out.__setitem__(mode, one_pass(mode))))
    scale = max(float(g.abs().max()) for g in out["block"][1].values())
    grad_diff = {m: max(float((out[m][1][n] - g).abs().max()) for n, g in out["block"][1].items()) / scale
                 for m in ("columns", "shared", "grouped")}
    # prompt + response tokens the forwards run, without and with the shared prefix (teacher, student)
    run_tokens: dict[str, dict] = {}
    for side in ("teacher", "student"):
        for name, bs in (("shared", batches), ("grouped", grouped)):
            seqs = [[getattr(it, f"{side}_ids") for it in b] for b in bs]
            pre = [shared_prompt_len(s, [it.response_len for it in b]) for s, b in zip(seqs, bs)]
            run_tokens.setdefault(side, {})["whole"] = sum(len(x) for s in seqs for x in s)
            run_tokens[side][name] = sum(len(x) for s in seqs for x in s) - sum((len(s) - 1) * p
                                                                                for s, p in zip(seqs, pre))
            run_tokens[side][f"mean_prefix_{name}"] = rnd(statistics.mean(pre), 1)
    med = {m: statistics.median(v) for m, v in times.items()}
    block_cols = sum(max(it.response_len for it in b) for b in batches)
    kept = sum(len(kept_columns(response_mask(b))) for b in batches)
    V = model.config.vocab_size
    # fp32 logits alive per micro-batch (teacher + student), the largest micro-batch
    biggest = max(batches, key=lambda b: len(b) * max(it.response_len for it in b))
    rows_R = len(biggest) * max(it.response_len for it in biggest)
    rows_K = len(biggest) * len(kept_columns(response_mask(biggest)))
    mib = lambda n, v: rnd(2 * n * v * 4 / 2**20, 1)  # noqa: E731
    results = {
        "model": str(args.model), "repeats": args.repeats, "threads": args.threads, "micro_batch": mb,
        "pairs": len(items), "policy_tokens": sum(it.tokens for it in items),
        "response_tokens": sum(it.response_len for it in items),
        "student_tokens": sum(len(it.student_ids) for it in items),
        "teacher_tokens": sum(len(it.teacher_ids) for it in items),
        "lm_head_positions": {"block": block_cols, "columns": kept},
        "tokens_run": run_tokens,
        **{f"seconds_{m}": [rnd(t, 2) for t in times[m]] for m in modes},
        **{f"median_{m}_s": rnd(med[m], 2) for m in modes},
        "speedup": rnd(med["block"] / med["columns"], 3), "speedup_shared_over_columns":
            rnd(med["columns"] / med["shared"], 3), "speedup_shared_over_block": rnd(med["block"] / med["shared"], 3),
        "speedup_grouped_over_columns": rnd(med["columns"] / med["grouped"], 3),
        "speedup_grouped_over_block": rnd(med["block"] / med["grouped"], 3),
        **{f"loss_{m}": out[m][0] for m in modes},
        "max_grad_diff_rel": {m: rnd(v, 9) for m, v in grad_diff.items()},
        "logits_mib_largest_micro_batch": {"block": mib(rows_R, V), "columns": mib(rows_K, V),
                                           "block_qwen_vocab": mib(rows_R, QWEN_VOCAB),
                                           "columns_qwen_vocab": mib(rows_K, QWEN_VOCAB)},
    }
    write_results(RESULTS_DIR / "ofsd_logits.json", results, packages=("torch", "transformers"))
    L = results["logits_mib_largest_micro_batch"]
    tr = run_tokens
    print_table("OFSD loss (teacher forward, student forward + backward): whole response block vs policy positions "
                "vs + shared prompt prefix vs + one question's pairs together",
                ["pairs", "LM-head positions", "tokens run (t + s)", "block s", "columns s", "shared s",
                 "grouped s", "grouped / columns", "logits MiB (V 49k)", "logits MiB (V 152k)",
                 "max grad diff (rel.)"],
                [[len(items), f"{block_cols} → {kept}",
                  f"{tr['teacher']['whole'] + tr['student']['whole']} → "
                  f"{tr['teacher']['shared'] + tr['student']['shared']} → "
                  f"{tr['teacher']['grouped'] + tr['student']['grouped']}",
                  rnd(med["block"], 1), rnd(med["columns"], 1), rnd(med["shared"], 1), rnd(med["grouped"], 1),
                  rnd(med["columns"] / med["grouped"], 2), f"{L['block']} → {L['columns']}",
                  f"{L['block_qwen_vocab']} → {L['columns_qwen_vocab']}",
                  " / ".join(f"{v:.1e}" for v in grad_diff.values())]],
                note=f"{len(items)} pairs of the demo's GRPO batch (sibling context), micro-batches of {mb}, "
                     f"{results['policy_tokens']} policy tokens in {results['response_tokens']} response tokens; "
                     f"logits: teacher + student fp32 of the largest micro-batch; medians of {args.repeats} "
                     f"alternating runs; {args.threads} threads")


if __name__ == "__main__":
    main()
