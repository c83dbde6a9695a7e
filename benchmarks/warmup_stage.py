"""The demo's warm-up stage end to end, with and without ``warmup.share_prompt``, on CPU.

:func:`searche1.warmup.run_warmup` exactly as ``searche1 demo`` calls it (the demo's warm-up and rollout settings,
every training file of the searchqa miniature, the BM25 index, the embedded SmolLM2): demonstrations, model load,
12 optimizer steps of 4 demonstrations, the atomic save. Off and on alternate (``--repeats`` each); reported: wall
seconds, the training loop's seconds and the final loss (equal up to float rounding). Writes
benchmarks/results/warmup_stage.json.

    python benchmarks/warmup_stage.py [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, RESULTS_DIR, log, print_table, rnd, time_call, write_results  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="searchqa folder (default: ../shared/data/searchqa)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from searche1.demo import DemoConfig
    from searche1.models import resolve_model_path
    from searche1.paths import searchqa_dir
    from searche1.retrieval.index import ensure_index
    from searche1.warmup import run_warmup

    torch.set_num_threads(args.threads)
    data = args.data or searchqa_dir()
    if data is None:
        sys.exit("no searchqa data (fix: pass --data DIR)")
    cfg = DemoConfig()
    base = resolve_model_path(cfg.model.name_or_path)
    index = ensure_index(data / "corpus.jsonl", REPO_ROOT / "runs" / "searchqa-bm25")
    train = sorted((data / "train").glob("*.jsonl"))
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for mode in ("off", "on"):
                log(f"warm-up, share_prompt {mode}, repeat {r + 1}/{args.repeats}")
                out = Path(tmp) / mode
                wcfg = replace(cfg.warmup, share_prompt=mode == "on")
                wall = time_call(lambda: run_warmup(base, index, train, out, wcfg, rollout_cfg=cfg.rollout,
                                                    overwrite=True, progress=False))
                m = json.loads((out / "warmup.json").read_text())["metrics"]
                runs[mode].append({"wall_s": rnd(wall, 1), "train_s": rnd(m["time/warmup_s"], 1),
                                   "steps": m["warmup/steps"], "tokens": m["warmup/tokens"],
                                   "loss_last": m["warmup/loss_last"]})
    med = {k: {f: statistics.median(x[f] for x in v) for f in ("wall_s", "train_s")} for k, v in runs.items()}
    results = {"model": str(base), "threads": args.threads, "repeats": args.repeats, "runs": runs,
               "median": med, "speedup_train": rnd(med["off"]["train_s"] / med["on"]["train_s"], 3),
               "speedup_wall": rnd(med["off"]["wall_s"] / med["on"]["wall_s"], 3)}
    write_results(RESULTS_DIR / "warmup_stage.json", results, packages=("torch", "transformers"))
    print_table("The demo's warm-up stage: warmup.share_prompt off vs on (CPU)",
                ["share_prompt", "wall s (runs)", "training s (runs)", "final loss"],
                [[k, ", ".join(str(x["wall_s"]) for x in v), ", ".join(str(x["train_s"]) for x in v),
                  f"{v[-1]['loss_last']:.7f}"] for k, v in runs.items()],
                note=f"speed-up (medians): training {results['speedup_train']}×, wall {results['speedup_wall']}×; "
                     f"{runs['on'][0]['steps']} steps, {runs['on'][0]['tokens']} tokens; {args.threads} threads")


if __name__ == "__main__":
    main()
