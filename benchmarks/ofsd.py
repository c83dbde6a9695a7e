"""The OFSD phase's cost against a GRPO round, teacher storage, top-k error on real outputs, and the ablation.

One GRPO run from the warmed-up policy (``--config``, default configs/searchqa-cpu.yaml) trains N + M steps with dev
evaluations (it is also the GRPO learning curve). At step N it branches; every arm sees the same number of sampled
rollouts after the warm-up:

    base        the warmed-up policy (the GRPO run's step-0 evaluation)
    grpo        GRPO for N + M steps                      (M more steps = M · questions · G rollouts)
    grpo_revkl  GRPO N steps → distillation, reverse KL   (questions · K = M · questions_per_step · G rollouts)
    grpo_ofsd   GRPO N steps → OFSD, forward KL (Search-E1, sibling context)

``ofsd_cost_vs_grpo_round`` = CPU seconds of the OFSD phase / CPU seconds of the N-step GRPO round it follows
(process CPU time, so other jobs on the machine distort it less than wall time; wall seconds are reported too).
The top-k error is measured on real pairs of the branch policy: the top-k + tail forward KL against the exact one
on the same micro-batches, no training. Every stage is resumable: rerun the script and finished stages are reused.

    python benchmarks/ofsd.py [--config configs/searchqa-cpu.yaml] [--run runs/ablation] [--extra-steps 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, log, print_table, rnd, write_results  # noqa: E402

ARMS = ("base", "grpo", "grpo_revkl", "grpo_ofsd")


def grpo_stage(cfg, run: Path, total_steps: int) -> Path:
    from searche1.train import run_grpo

    out = run / "grpo"
    gcfg = replace(cfg, schedule=["grpo"], grpo=replace(cfg.grpo, steps=total_steps))
    log(f"GRPO {total_steps} steps → {out}")
    run_grpo(gcfg, out, resume=(out / "metrics.jsonl").exists())
    return out


def distill_arm(cfg, branch: Path, out: Path, loss: str) -> dict:
    """An OFSD phase with ``loss`` from the branch checkpoint, then the dev evaluation; cached in ``out``."""
    from searche1.models import load_policy
    from searche1.pipeline import _run_ofsd
    from searche1.retrieval.config import make_retriever
    from searche1.train import dev_eval
    from searche1.data.qa import load_qa_files

    done = out / "arm.json"
    if done.is_file():
        return json.loads(done.read_text())
    acfg = replace(cfg, model=replace(cfg.model, name_or_path=str(branch)), ofsd=replace(cfg.ofsd, loss=loss))
    log(f"{out.name}: distillation ({loss}) from {branch}")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    model_dir, metrics = _run_ofsd(acfg, out, seed=cfg.grpo.seed + 1, progress=True, episode_reward=None)
    cost = {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0}
    log(f"{out.name}: dev evaluation")
    model, tok = load_policy(replace(cfg.model, name_or_path=str(model_dir)))
    dev_eval(model, tok, make_retriever(cfg.retrieval), load_qa_files(cfg.data.dev), cfg, out / "eval.json")
    arm = {"cost": cost, "metrics": metrics, "model": str(model_dir)}
    done.write_text(json.dumps(arm, indent=1))
    return arm


def topk_error(cfg, branch: Path, questions: int, ks: list[int]) -> dict:
    """Top-k + tail forward KL vs exact on real pairs of the branch policy (same logits, no training)."""
    import torch

    from searche1.algos.distill import forward_kl_topk, get_distill_loss, topk_teacher
    from searche1.data.qa import load_qa
    from searche1.models import load_policy
    from searche1.ofsd.pairs import mine_pairs
    from searche1.ofsd.phase import FrozenTeacher, prepare_pairs, response_logits, response_mask, sample_groups
    from searche1.retrieval.config import make_retriever

    model, tok = load_policy(replace(cfg.model, name_or_path=str(branch)))
    qs = [q for f in cfg.data.train for q in load_qa(f)]
    ocfg = replace(cfg.ofsd, questions=questions)
    groups, _ = sample_groups(model, tok, make_retriever(cfg.retrieval), qs, ocfg, cfg.rollout, seed=12345)
    pairs, _ = mine_pairs(groups, student="all_others")
    items, _ = prepare_pairs(pairs, tok, context=ocfg.context, chat=cfg.rollout.chat,
                             max_searches=cfg.rollout.max_searches)
    teacher = FrozenTeacher(model)
    exact_sum = {k: 0.0 for k in ks}
    topk_sum = {k: 0.0 for k in ks}
    mass = {k: 0.0 for k in ks}
    tokens = 0.0
    per_batch = []
    with torch.no_grad():
        for s in range(0, len(items), 2):
            batch = items[s:s + 2]
            mask = response_mask(batch)
            t = teacher.response_logits(batch, tok.pad_token_id, "cpu", False)
            st = response_logits(model, [it.student_ids for it in batch], [it.response_len for it in batch],
                                 tok.pad_token_id, "cpu")
            n = float(mask.sum())
            exact, _ = get_distill_loss("forward_kl")(st, t, mask, clip=cfg.ofsd.clip)
            for k in ks:
                idx, logp, tail = topk_teacher(t, k)
                approx, _ = forward_kl_topk(st, idx, logp, tail, mask, clip=cfg.ofsd.clip)
                exact_sum[k] += float(exact) * n
                topk_sum[k] += float(approx) * n
                mass[k] += float((logp.exp().sum(-1) * mask).sum())
            per_batch.append({"tokens": n, "exact": float(exact)})
            tokens += n
    out = {"pairs": len(items), "tokens": tokens, "questions": questions, "by_k": {}}
    for k in ks:
        e, a = exact_sum[k] / max(tokens, 1), topk_sum[k] / max(tokens, 1)
        out["by_k"][str(k)] = {"exact_loss": rnd(e, 6), "topk_loss": rnd(a, 6),
                               "rel_error": rnd(abs(a - e) / e if e else None, 5),
                               "teacher_topk_mass": rnd(mass[k] / max(tokens, 1), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/searchqa-cpu.yaml")
    ap.add_argument("--run", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--extra-steps", type=int, default=2, help="M: GRPO steps matching one OFSD phase's rollouts")
    ap.add_argument("--topk-questions", type=int, default=12)
    ap.add_argument("--ks", default="16,64,256")
    args = ap.parse_args()

    from searche1.algos.distill import DEFAULT_TOPK
    from searche1.config import load_config, to_dict
    from searche1.metrics import read_metrics
    from searche1.ofsd.teacher import bytes_per_token
    from searche1.pipeline import PipelineConfig

    cfg = load_config(PipelineConfig, args.config)
    g, N, M = cfg.grpo, cfg.grpo.steps, args.extra_steps
    per_step = g.questions_per_step * g.group_size
    if cfg.ofsd.questions * cfg.ofsd.samples_per_question != M * per_step:
        raise SystemExit(f"{args.config}: ofsd.questions · samples_per_question = "
                         f"{cfg.ofsd.questions * cfg.ofsd.samples_per_question} rollouts, but {M} GRPO steps sample "
                         f"{M * per_step}: set --extra-steps or ofsd.questions so the arms match")
    if N % g.save_every:
        raise SystemExit(f"{args.config}: grpo.steps ({N}) must be a multiple of save_every ({g.save_every}) so the "
                         "branch checkpoint exists")
    grpo_dir = grpo_stage(cfg, args.run, N + M)
    branch = grpo_dir / "checkpoints" / f"step-{N:06d}"
    if not branch.is_dir():
        raise SystemExit(f"{branch} is missing (raise grpo.keep_last so the branch checkpoint is kept)")
    arms = {"grpo_revkl": distill_arm(cfg, branch, args.run / "grpo_revkl", "reverse_kl"),
            "grpo_ofsd": distill_arm(cfg, branch, args.run / "grpo_ofsd", "forward_kl")}
    log("top-k error on real pairs")
    ks = [int(k) for k in args.ks.split(",")]
    err = topk_error(cfg, branch, args.topk_questions, ks)

    rows = [r for r in read_metrics(grpo_dir) if "time/step_s" in r]
    round_rows = [r for r in rows if r["step"] <= N]
    grpo_round = {"steps": N, "wall_s": sum(r["time/step_s"] for r in round_rows),
                  "cpu_s": sum(r.get("time/step_cpu_s", float("nan")) for r in round_rows)}
    ofsd_cost = arms["grpo_ofsd"]["cost"]
    ratio_cpu = ofsd_cost["cpu_s"] / grpo_round["cpu_s"]
    ratio_wall = ofsd_cost["wall_s"] / grpo_round["wall_s"]

    evals = {"base": grpo_dir / "evals" / "step-0.json", "grpo": grpo_dir / "evals" / f"step-{N + M}.json",
             "grpo_revkl": args.run / "grpo_revkl" / "eval.json", "grpo_ofsd": args.run / "grpo_ofsd" / "eval.json"}
    rollouts = {"base": 0, "grpo": (N + M) * per_step, "grpo_revkl": N * per_step + M * per_step,
                "grpo_ofsd": N * per_step + M * per_step}
    ablation = {}
    for arm in ARMS:
        ablation[arm] = {
            "eval": json.loads(evals[arm].read_text()),
            "settings": {"rollouts_after_warmup": rollouts[arm], "grpo_steps": N + M if arm == "grpo" else (
                0 if arm == "base" else N), "distill_loss": {"grpo_revkl": "reverse_kl", "grpo_ofsd": "forward_kl"}.get(arm),
                "seed": g.seed, "model": cfg.model.name_or_path, "config": args.config,
                "dev_questions_per_dataset": cfg.data.dev_limit},
        }
        if arm in arms:
            ablation[arm]["distill_metrics"] = arms[arm]["metrics"]
    vocab = 49152
    results = {
        "ofsd_cost_vs_grpo_round": rnd(ratio_cpu, 4),
        "ofsd_cost_vs_grpo_round_wall": rnd(ratio_wall, 4),
        "grpo_round": {k: rnd(v, 1) if isinstance(v, float) else v for k, v in grpo_round.items()},
        "ofsd_phase": {**{k: rnd(v, 1) for k, v in ofsd_cost.items()},
                       "split_s": {k: rnd(v, 1) for k, v in arms["grpo_ofsd"]["metrics"].items()
                                   if k.startswith("time/")}},
        "teacher_bytes_per_token": {"topk": bytes_per_token(DEFAULT_TOPK), "topk_k": DEFAULT_TOPK,
                                    "full_vocab_fp32": vocab * 4},
        "topk_error_real": err,
        "ablation": ablation,
        "config": to_dict(cfg),
        "extra_steps": M,
    }
    path = write_results(RESULTS_DIR / "ofsd.json", results, packages=("torch", "transformers"))
    names = list(ablation["base"]["eval"]["datasets"])
    table = []
    for arm in ARMS:
        ev = ablation[arm]["eval"]
        table.append([arm, *[ev["datasets"][n]["em"] for n in names], ev["average"]["em"], ev["average"]["searches"],
                      rollouts[arm]])
    print_table(f"Ablation on searchqa dev ({cfg.data.dev_limit} questions per dataset), EM",
                ["arm", *names, "average", "searches/q", "rollouts"], table)
    print_table("OFSD cost", ["", "GRPO round (N steps)", "OFSD phase", "ratio"],
                [["CPU s", rnd(grpo_round["cpu_s"], 0), rnd(ofsd_cost["cpu_s"], 0), rnd(ratio_cpu, 3)],
                 ["wall s", rnd(grpo_round["wall_s"], 0), rnd(ofsd_cost["wall_s"], 0), rnd(ratio_wall, 3)]])
    print_table("Top-k teacher vs exact forward KL (real pairs)", ["k", "exact", "top-k", "rel. error", "top-k mass"],
                [[k, v["exact_loss"], v["topk_loss"], v["rel_error"], v["teacher_topk_mass"]]
                 for k, v in err["by_k"].items()])
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
