"""`searche1 demo`: the README's main job.

Today it exercises what exists (the foundation): prepare a corpus (the searchqa miniature when present, otherwise a
generated synthetic world), build a BM25 index, answer sample questions, and print answer recall@3 per dataset.
Later stages (warm-up, GRPO, OFSD, evaluation) extend this same command.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from searche1.errors import DataError
from searche1.paths import searchqa_dir

console = Console()


def prepare_data(data: Path | None, out: Path, synthetic: bool) -> Path:
    """Return a folder with corpus.jsonl and dev/*.jsonl: the given one, searchqa, or a fresh synthetic world."""
    if data is None and not synthetic:
        data = searchqa_dir()
    if data is not None and not synthetic:
        if not (data / "corpus.jsonl").is_file():
            raise DataError(data, "no corpus.jsonl in this folder", fix="pass a searchqa-style folder to --data")
        return data
    world_dir = out / "world"
    if not (world_dir / "corpus.jsonl").is_file():
        from searche1.data.synth import generate_world, write_world

        console.print("[bold]No searchqa data found[/]: generating a synthetic world (seed 0)")
        write_world(generate_world(seed=0), world_dir, overwrite=True)
    return world_dir


def run_demo(data: Path | None = None, out: Path = Path("runs/demo"), synthetic: bool = False) -> dict:
    from searche1.data.qa import load_qa_files
    from searche1.retrieval.index import ensure_index, load_retriever
    from searche1.retrieval.metrics import answer_recall, has_answer

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data_dir = prepare_data(data, out, synthetic)
    console.print(f"[bold]BM25 index[/] of {data_dir / 'corpus.jsonl'} (built once, then reused)")
    index_dir = ensure_index(data_dir / "corpus.jsonl", out / "index")
    retriever = load_retriever(index_dir)
    dev = load_qa_files([data_dir / "dev"])

    console.print("\n[bold]Sample searches[/] (the question itself as the query, top 3):")
    for name, exs in list(dev.items())[:3]:
        ex = exs[0]
        hits = retriever.search([ex.question], 3)[0]
        console.print(f"[cyan]{name}[/] Q: {ex.question}  [dim](gold: {', '.join(ex.answers[:3])})[/]")
        for i, h in enumerate(hits, 1):
            mark = "[green]✓[/]" if has_answer(h.contents, ex.answers) else " "
            console.print(f"   {mark} {i}. {h.title[:60]} [dim]({h.score:.1f})[/]")

    table = Table(title=f"BM25 answer recall@3 on {data_dir / 'dev'}")
    table.add_column("dataset")
    table.add_column("questions", justify="right")
    table.add_column("recall@3", justify="right")
    results = {}
    for name, exs in dev.items():
        r = answer_recall(retriever, exs, topk=3)
        results[name] = {"n": len(exs), "recall@3": round(r, 4)}
        table.add_row(name, str(len(exs)), f"{r:.3f}")
    console.print(table)
    summary = {"data": str(data_dir), "index": str(index_dir), "recall": results,
               "seconds": round(time.perf_counter() - t0, 1)}
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"done in {summary['seconds']} s; results in {out / 'demo.json'}")
    return summary
