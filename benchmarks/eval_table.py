"""The seven-dataset evaluation table on searchqa dev: one model, several modes, merged into one JSON file.

    python benchmarks/eval_table.py --model smollm2-135m-instruct --label base --modes direct naive-rag agent
    python benchmarks/eval_table.py --model runs/warmup-smollm2 --label warmup --modes agent

Each run adds ``{label}/{mode}`` entries (the `searche1 eval` JSON) to benchmarks/results/eval_smollm2.json and prints
the markdown table of everything in that file. Greedy decoding; the first ``--limit`` questions of each dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, log, write_results  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--label", help="name of this model's rows (required unless --render)")
    ap.add_argument("--modes", nargs="+", default=["direct", "naive-rag", "agent"],
                    help="direct, naive-rag, agent, agent-constrained")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default=str(RESULTS_DIR / "eval_smollm2.json"))
    ap.add_argument("--render", action="store_true", help="only print the README table of the results file")
    args = ap.parse_args()
    if args.render:
        print(render(json.loads(Path(args.out).read_text())["runs"]))
        return
    if not args.label:
        ap.error("--label is required (e.g. --label base), unless --render")

    from searche1.data.qa import load_qa_files
    from searche1.evaluate import EvalConfig, evaluate, markdown_table
    from searche1.models import ModelConfig, load_policy
    from searche1.paths import cache_dir, searchqa_dir
    from searche1.retrieval.index import ensure_index, load_retriever

    data = searchqa_dir()
    if data is None:
        print("searchqa data not found (../shared/data/searchqa); nothing to evaluate")
        return
    retriever = load_retriever(ensure_index(data / "corpus.jsonl", cache_dir() / "indexes" / "searchqa-bm25"))
    datasets = load_qa_files([data / "dev"])
    order = ["nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle"]
    datasets = {k: datasets[k] for k in order if k in datasets}
    model, tok = load_policy(ModelConfig(name_or_path=args.model))
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.is_file() else {}
    runs = doc.get("runs", {})
    for mode in args.modes:
        constrained = mode == "agent-constrained"
        cfg = EvalConfig(mode="agent" if constrained else mode, limit=args.limit, batch_size=args.batch_size,
                         turn_start="constrained" if constrained else "free")
        log(f"{args.label}: {mode}")
        res = evaluate(model, tok, retriever, datasets, cfg,
                       samples_out=RESULTS_DIR / "samples" / f"{args.label}-{mode}.jsonl")
        res["settings"]["model"] = args.model
        runs[f"{args.label}/{mode}"] = res
        doc = json.loads(out.read_text()) if out.is_file() else {}  # another run may have written meanwhile
        merged = {**doc.get("runs", {}), f"{args.label}/{mode}": res}
        write_results(out, {"runs": merged}, packages=["torch", "transformers"])
        print(markdown_table(res, [f"{args.label}/{mode}"]), flush=True)
    doc = json.loads(out.read_text())
    labels = list(doc["runs"])
    print(markdown_table([doc["runs"][k] for k in labels], labels))


def render(runs: dict) -> str:
    """README table: EM per dataset for every run, then F1, searches and valid-format averages."""
    pref = ["direct", "naive-rag", "agent", "agent-constrained"]
    labels = sorted(runs, key=lambda k: (k.split("/")[0] != "base", pref.index(k.split("/")[1])
                                         if k.split("/")[1] in pref else 99))
    names = list(dict.fromkeys(n for r in runs.values() for n in r["datasets"]))
    lines = ["| dataset | n | " + " | ".join(labels) + " |", "|---|---:|" + "---:|" * len(labels)]
    for n in names:
        count = next(str(r["datasets"][n]["n"]) for r in runs.values() if n in r["datasets"])
        lines.append(f"| {n} | {count} | " + " | ".join(
            f"{runs[k]['datasets'][n]['em']:.3f}" if n in runs[k]["datasets"] else "–" for k in labels) + " |")
    for key, name in (("em", "**average EM**"), ("f1", "average F1"), ("searches", "searches / question"),
                      ("valid_format", "valid format"), ("response_tokens", "response tokens")):
        lines.append(f"| {name} | | " + " | ".join(f"{runs[k]['average'][key]:.3f}" for k in labels) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
