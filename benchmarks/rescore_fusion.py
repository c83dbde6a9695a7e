"""GRPO update time with and without the trainer's re-scoring pass (``searche1.old_logprobs.fuse_rescore``).

When the sampler's log-probs are not the trainer's (a bf16 sampling copy where bf16 is native, or vLLM), the trainer
needs the "old" log-probs in its own precision. With several PPO epochs that is a no-grad pass of its own before the
update; with one epoch (the default, and the paper's) the loss forward's detached log-probs are the same numbers, so
the pass is skipped. This runs the demo's GRPO step (the warmed-up model of ``searche1 demo``, its BM25 index, the
searchqa train questions, 4 questions × G = 5, ≤ 4 searches, the last 10 layers training) with
``rollout.recompute_logprobs: true`` (a bf16 copy samples where bf16 is native; elsewhere the fp32 policy samples and
is re-scored anyway), alternating fused and separate-pass runs, and reports the median update time per step
(``time/train_s``) of each and their ratio. All-equal-reward groups are kept so every step trains on 20 episodes.
Writes benchmarks/results/rescore_fusion.json.

    python benchmarks/rescore_fusion.py [--demo runs/demo] [--data ../shared/data/searchqa] [--steps 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, RESULTS_DIR, log, print_table, rnd, write_results  # noqa: E402


def run(demo: Path, data: Path, steps: int, fuse: bool, seed: int) -> list[dict]:
    import searche1.train as train
    from searche1.config import from_dict
    from searche1.metrics import read_metrics

    cfg = from_dict(train.TrainConfig, {
        "model": {"name_or_path": str(demo / "warmup"), "train_layers": 10},
        "retrieval": {"index": str(demo / "index")},
        "rollout": {"max_searches": 4, "max_turn_tokens": 48, "max_doc_tokens": 64, "topk": 3, "batch_size": 40,
                    "recompute_logprobs": True},
        "data": {"train": [str(p) for p in sorted((data / "train").glob("*.jsonl"))]},
        "grpo": {"steps": steps, "questions_per_step": 4, "group_size": 5, "lr": 1e-5, "warmup_steps": 1,
                 "save_every": 1000, "seed": seed},
    })
    real = train.fuse_rescore
    train.fuse_rescore = lambda recompute, epochs: fuse and real(recompute, epochs)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = train.run_grpo(cfg, Path(tmp) / "run", progress=False)
            return read_metrics(out)
    finally:
        train.fuse_rescore = real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=REPO_ROOT / "runs" / "demo", help="a `searche1 demo` output folder")
    ap.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "searchqa")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "rescore_fusion.json")
    a = ap.parse_args()
    for need in (a.demo / "warmup" / "config.json", a.demo / "index", a.data / "train"):
        if not need.exists():
            sys.exit(f"{need} is missing (fix: run `make demo` first, or pass --demo RUN and --data DIR)")
    import torch

    from searche1.models import cpu_has_native_bf16

    rows: dict[bool, list[dict]] = {True: [], False: []}
    for rep in range(a.repeats):
        for fuse in (True, False) if rep % 2 == 0 else (False, True):
            metrics = run(a.demo, a.data, a.steps, fuse, a.seed)
            rows[fuse] += metrics
            log(f"repeat {rep + 1} fused={fuse}: train s per step "
                f"{[rnd(m['time/train_s'], 2) for m in metrics]}, policy tokens "
                f"{[rnd(m['loss/num_tokens'], 0) for m in metrics]}")
    med = {f: statistics.median(m["time/train_s"] for m in rows[f]) for f in rows}
    gap = {f: statistics.median(m["rollout/logprob_mismatch"] for m in rows[f]) for f in rows}
    ratio = med[False] / med[True]
    print_table(f"GRPO update time per step, demo step (20 episodes), {a.repeats} alternating repeats × "
                f"{a.steps} steps",
                ["", "separate re-scoring pass", "old log-probs from the loss forward", "speed-up"],
                [["median time/train_s", rnd(med[False], 2), rnd(med[True], 2), f"{ratio:.2f}×"],
                 ["median rollout/logprob_mismatch", rnd(gap[False], 4), rnd(gap[True], 4), ""]])
    write_results(a.out, {"native_bf16": cpu_has_native_bf16(), "threads": torch.get_num_threads(),
                          "steps": a.steps, "repeats": a.repeats,
                          "train_s": {"separate": [rnd(m["time/train_s"], 3) for m in rows[False]],
                                      "fused": [rnd(m["time/train_s"], 3) for m in rows[True]]},
                          "median_train_s": {"separate": rnd(med[False], 3), "fused": rnd(med[True], 3)},
                          "speedup": rnd(ratio, 3),
                          "median_logprob_mismatch": {"separate": rnd(gap[False], 5), "fused": rnd(gap[True], 5)}},
                  packages=("torch", "transformers"))


if __name__ == "__main__":
    main()
