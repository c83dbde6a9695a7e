"""The GRPO learning curve's numbers (issue 4): training reward and dev EM from a run, plus paired comparisons of the
starting policy and the final checkpoint on larger dev slices.

    searche1 train --config configs/grpo-searchqa-cpu.yaml --out runs/grpo-searchqa [--set grpo.steps=40 ...]
    searche1 eval --model runs/warmup-smollm2 ... --limit 40 --out runs/curve-eval/step-0-l40.json        (and step 40,
    searche1 eval ... --offset 40 --limit 60 --out runs/curve-eval/step-0-o40.json                          and both)
    python benchmarks/grpo_curve.py --run runs/grpo-searchqa --evals runs/curve-eval --final 40

Writes ``benchmarks/results/grpo_curve.json`` and prints the tables in the README: dev EM/F1 at every evaluated step,
training reward averaged over blocks of 4 steps, and for each slice pair (``step-0-X`` vs ``step-FINAL-X``, plus
all slices pooled) the paired statistics of :mod:`searche1.significance`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, print_table, rnd, write_results  # noqa: E402

from searche1.metrics import read_metrics  # noqa: E402
from searche1.significance import compare, read_samples  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--evals", type=Path, required=True, help="folder with step-0-*.json and step-FINAL-*.json")
    ap.add_argument("--final", type=int, required=True, help="the final step's number")
    ap.add_argument("--boot", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "grpo_curve.json")
    a = ap.parse_args()

    rows = read_metrics(a.run)
    dev = [(r["step"], r["dev/em"], r["dev/f1"]) for r in rows if "dev/em" in r]
    reward = [r["reward/em"] for r in rows if "reward/em" in r]
    blocks = [statistics.mean(reward[i:i + 4]) for i in range(0, len(reward), 4)]
    steps = [r for r in rows if "time/step_s" in r]
    print_table(f"Dev EM during training ({a.run})", ["step", *[s for s, _, _ in dev]],
                [["dev EM", *[f"{e:.3f}" for _, e, _ in dev]], ["dev F1", *[f"{f:.3f}" for _, _, f in dev]]])
    print_table("Training reward (EM of the step's rollouts), mean of each block of 4 steps",
                ["steps", *[f"{i + 1}-{min(i + 4, len(reward))}" for i in range(0, len(reward), 4)]],
                [["reward", *[f"{b:.3f}" for b in blocks]]])
    slices = sorted(p.name[len("step-0-"):-len(".samples.jsonl")] for p in a.evals.glob("step-0-*.samples.jsonl"))
    pairs = {s: (a.evals / f"step-0-{s}.samples.jsonl", a.evals / f"step-{a.final}-{s}.samples.jsonl")
             for s in slices if (a.evals / f"step-{a.final}-{s}.samples.jsonl").is_file()}
    if not pairs:
        raise SystemExit(f"no step-0-*/step-{a.final}-* sample pairs in {a.evals}")
    base = {k: v for s in pairs for k, v in read_samples(pairs[s][0]).items()}
    final = {k: v for s in pairs for k, v in read_samples(pairs[s][1]).items()}
    results = {name: compare(read_samples(x), read_samples(y), n_boot=a.boot)
               for name, (x, y) in pairs.items()}
    results["pooled"] = compare(base, final, n_boot=a.boot)
    table = []
    for name, r in results.items():
        o = r["average"]
        table.append([name, o["n"], f"{o['em_a']:.3f}", f"{o['em_b']:.3f}", f"{o['delta']:+.3f}",
                      f"{o['ci_low']:+.3f} … {o['ci_high']:+.3f}", o["wins"], o["losses"], f"{o['p_mcnemar']:.3f}",
                      f"{o['p_le_zero']:.3f}"])
    print_table(f"Step 0 vs step {a.final}, paired (average = mean over datasets)",
                ["slice", "n", "EM step 0", f"EM step {a.final}", "Δ", "95% CI", "wins", "losses", "McNemar p",
                 "P(Δ ≤ 0)"], table)
    pooled = results["pooled"]["datasets"]
    print_table("Pooled, per dataset", ["dataset", "n", "EM step 0", f"EM step {a.final}", "wins", "losses",
                                        "McNemar p"],
                [[k, v["n"], f"{v['em_a']:.3f}", f"{v['em_b']:.3f}", v["wins"], v["losses"], f"{v['p_mcnemar']:.3f}"]
                 for k, v in pooled.items()])
    write_results(a.out, {
        "run": str(a.run), "final_step": a.final, "dev_curve": [{"step": s, "em": e, "f1": f} for s, e, f in dev],
        "reward_per_step": reward, "reward_blocks_of_4": [rnd(b, 4) for b in blocks],
        "median_step_s": rnd(statistics.median(r["time/step_s"] for r in steps), 1),
        "median_rollout_s": rnd(statistics.median(r["time/rollout_s"] for r in steps), 1),
        "median_train_s": rnd(statistics.median(r["time/train_s"] for r in steps), 1),
        "paired": results})


if __name__ == "__main__":
    main()
