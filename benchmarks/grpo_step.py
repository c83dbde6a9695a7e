"""Seconds per GRPO step, split into rollout / reward / train, against TRL's GRPOTrainer in the same run.

Both sides: the same model, the same prompts (our agent prompt, chat template), 8 questions × G = 5 completions, the
same maximum completion length, temperature 1, no KL (β = 0), token-mean loss, micro-batches of 4 with gradient
accumulation over all 40 completions, one AdamW step, fp32 on CPU. The comparison is single-turn (TRL's trainer has
no search environment): our rollout runs with ``max_searches = 0``. A multi-turn step of ours (4 searches allowed) is
measured too, for reference. Runs alternate ours/TRL ``--repeats`` times; the ratio is the median of the paired
ratios. Writes benchmarks/results/grpo_step.json.

    python benchmarks/grpo_step.py [--model runs/warmup-smollm2] [--questions 8] [--max-tokens 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, log, print_table, rnd, write_results  # noqa: E402


def ours_step(model_path: str, index: Path, train_file: Path, args, max_searches: int) -> dict:
    from searche1.config import from_dict
    from searche1.metrics import read_metrics
    from searche1.train import TrainConfig, run_grpo

    cfg = from_dict(TrainConfig, {
        "model": {"name_or_path": model_path, "dtype": "float32"},
        "retrieval": {"index": str(index), "cache_size": 0},
        "rollout": {"max_searches": max_searches, "max_turn_tokens": args.max_tokens, "temperature": 1.0,
                    "batch_size": args.questions * 5},
        "data": {"train": [str(train_file)]},
        "grpo": {"steps": 1, "questions_per_step": args.questions, "group_size": 5, "micro_batch_size": 4,
                 "lr": 1e-6, "warmup_steps": 1, "save_every": 1000, "seed": args.seed},
    })
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cfg.grpo.save_every = 1000
        run_grpo(cfg, out, progress=False)
        m = read_metrics(out)[0]
    return {"rollout_s": m["time/rollout_s"], "reward_s": m["time/reward_s"], "train_s": m["time/train_s"],
            "step_s": m["time/step_s"], "policy_tokens_per_rollout": m["rollout/policy_tokens"],
            "searches": m["rollout/searches"]}


def trl_step(model_path: str, questions, args) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from searche1 import protocol
    from searche1.models import load_tokenizer
    from searche1.rewards import exact_match

    tok = load_tokenizer(model_path)
    rows = [{"prompt": protocol.build_prompt(q.question, tok, max_searches=0), "golden": q.answers} for q in questions]

    def em_reward(completions, golden, **_):
        return [exact_match(protocol.extract_answer(c) or "", g) for c, g in zip(completions, golden)]

    with tempfile.TemporaryDirectory() as tmp:
        n = len(rows) * 5
        if n % 4:
            raise SystemExit(f"--questions {len(rows)}: 5 x questions must be a multiple of the micro-batch 4")
        cfg = GRPOConfig(output_dir=tmp, per_device_train_batch_size=4, gradient_accumulation_steps=n // 4,
                         generation_batch_size=n, num_generations=5, max_completion_length=args.max_tokens, temperature=1.0, beta=0.0,
                         loss_type="dapo", learning_rate=1e-6, max_steps=1, use_cpu=True, bf16=False,
                         report_to="none", save_strategy="no", logging_steps=1, seed=args.seed,
                         dataloader_num_workers=0, disable_tqdm=True)
        trainer = GRPOTrainer(model=model_path, reward_funcs=em_reward, args=cfg, train_dataset=Dataset.from_list(rows),
                              processing_class=tok)
        t0 = time.perf_counter()
        trainer.train()
        return {"step_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/warmup-smollm2")
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-trl", action="store_true")
    ap.add_argument("--append", action="store_true",
                    help="add these paired runs to those already in --out (the ratio is the median over all)")
    ap.add_argument("--skip-multi", action="store_true",
                    help="do not re-measure the multi-turn step (keep the one in --out)")
    ap.add_argument("--out", default=str(RESULTS_DIR / "grpo_step.json"))
    args = ap.parse_args()

    import torch

    from searche1.data.qa import load_qa, write_qa
    from searche1.models import resolve_model_path
    from searche1.paths import cache_dir, searchqa_dir
    from searche1.retrieval.index import ensure_index

    data = searchqa_dir()
    if data is None:
        print("searchqa data not found (../shared/data/searchqa); nothing to benchmark")
        return
    model_path = str(resolve_model_path(args.model if Path(args.model).is_dir() else "smollm2-135m-instruct"))
    index = ensure_index(data / "corpus.jsonl", cache_dir() / "indexes" / "searchqa-bm25")
    questions = load_qa(data / "train" / "nq.jsonl")[: args.questions]
    tmpdir = Path(tempfile.mkdtemp())
    train_file = tmpdir / "bench.jsonl"
    write_qa(questions, train_file)  # exactly these questions: the sampler takes all of them in step 1
    log(f"model {model_path}, {args.questions} questions x 5, max {args.max_tokens} tokens, "
        f"torch threads {torch.get_num_threads()}")
    runs = []
    for r in range(args.repeats):
        ours = ours_step(model_path, index, train_file, args, max_searches=0)
        log(f"repeat {r}: ours {ours['step_s']:.1f}s (rollout {ours['rollout_s']:.1f} train {ours['train_s']:.1f})")
        trl = trl_step(model_path, questions, args) if not args.no_trl else {"step_s": float("nan")}
        log(f"repeat {r}: TRL {trl['step_s']:.1f}s")
        runs.append({"ours": ours, "trl": trl, "ratio": ours["step_s"] / trl["step_s"]})
    prev = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    if args.append:
        runs = prev.get("paired_runs", []) + runs
    if args.skip_multi and "ours_multi_turn" in prev:
        multi = prev["ours_multi_turn"]
    else:
        multi = ours_step(model_path, index, train_file, args, max_searches=4)
    med = lambda key: statistics.median(run["ours"][key] for run in runs)  # noqa: E731
    res = {
        "settings": {"model": model_path, "questions": args.questions, "group_size": 5,
                     "max_completion_tokens": args.max_tokens, "micro_batch": 4, "repeats": len(runs),
                     "dtype": "float32", "torch_threads": torch.get_num_threads()},
        "ratio_vs_trl": rnd(statistics.median(r["ratio"] for r in runs), 3),
        "ours_single_turn": {k: rnd(med(k), 2) for k in ("rollout_s", "reward_s", "train_s", "step_s")},
        "trl_step_s": rnd(statistics.median(r["trl"]["step_s"] for r in runs), 2),
        "ours_multi_turn": {k: rnd(v, 2) for k, v in multi.items()},
        "paired_runs": runs,
    }
    print_table("GRPO step on CPU (seconds, median of paired runs)",
                ["system", "rollout", "reward", "train", "step", "ours / TRL"],
                [["searche1 (single-turn)", *[res["ours_single_turn"][k] for k in ("rollout_s", "reward_s", "train_s",
                                                                                    "step_s")], res["ratio_vs_trl"]],
                 ["TRL GRPOTrainer", None, None, None, res["trl_step_s"], 1.0],
                 ["searche1 (multi-turn, ≤4 searches)", multi["rollout_s"], multi["reward_s"], multi["train_s"],
                  multi["step_s"], None]])
    write_results(args.out, res, packages=["torch", "transformers", "trl"])


if __name__ == "__main__":
    main()
