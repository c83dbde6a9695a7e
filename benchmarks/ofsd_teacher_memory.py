"""Peak memory of an OFSD phase with the teacher as its own bf16 copy vs the sampler's bf16 copy reused.

The demo's OFSD phase (the warmed-up SmolLM2 of ``searche1 demo``, its BM25 index, the searchqa train questions,
8 questions × K = 5 and more until 2 pairs, exact teacher, the last 10 layers training, bf16 autocast and a bf16
sampling copy forced on so both arms run the same way on any CPU) runs in a fresh process per arm; each reports its
resident memory when distillation starts (the teacher made, the optimizer not yet: where the copy shows; measured
2026-11-28, the phase's peak comes earlier, in the re-sampling) and its peak (``ru_maxrss``). Arms alternate
``--repeats`` times. With the reuse the teacher is the sampling copy (``run_ofsd_phase(teacher_source=...)``, what
``searche1.pipeline`` passes); without it the phase deep-copies the policy into bf16 as before. Writes
benchmarks/results/ofsd_teacher_memory.json.

    python benchmarks/ofsd_teacher_memory.py [--demo runs/demo] [--data ../shared/data/searchqa] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, RESULTS_DIR, log, print_table, rnd, write_results  # noqa: E402


def arm(demo: Path, data: Path, reuse: bool) -> dict:
    """One OFSD phase in this process; returns its metrics and peak RSS (MiB)."""
    import gc
    import resource
    import tempfile

    import torch

    from searche1.data.qa import load_qa
    from searche1.models import ModelConfig, load_policy
    from searche1.ofsd.phase import OFSDConfig, run_ofsd_phase
    from searche1.pipeline import sampler_copy
    from searche1.retrieval.config import RetrievalConfig, make_retriever
    from searche1.rollout.factory import make_engine
    from searche1.rollout.types import RolloutConfig

    torch.manual_seed(0)
    model, tok = load_policy(ModelConfig(name_or_path=str(demo / "warmup"), train_layers=10, device="cpu"),
                             trainable=True)
    retriever = make_retriever(RetrievalConfig(index=str(demo / "index")))
    rollout = RolloutConfig(max_searches=4, max_turn_tokens=48, max_doc_tokens=64, topk=3, batch_size=40,
                            sampler_dtype="bfloat16")
    engine, sync, _ = make_engine(rollout, model, tok, retriever, model_path=str(demo / "warmup"),
                                  sync_dir=Path(tempfile.mkdtemp()) / "s", device="cpu")
    sync()
    cfg = OFSDConfig(questions=8, min_pairs=2, max_questions=24, samples_per_question=5, epochs=2, lr=1e-5,
                     bf16="on")
    questions = [q for f in sorted((data / "train").glob("*.jsonl")) for q in load_qa(f)]
    import searche1.ofsd.phase as phase

    at_train: list[float] = []
    real = phase.distill

    def distill(*args, **kw):  # resident memory when training starts: the teacher exists, the optimizer not yet
        gc.collect()
        at_train.append(rss_mib())
        return real(*args, **kw)

    phase.distill = distill
    with tempfile.TemporaryDirectory() as tmp:
        out = run_ofsd_phase(model, tok, retriever, questions, cfg, rollout, tmp, seed=1, progress=False,
                             engine=engine, teacher_source=sampler_copy(engine, model) if reuse else None)
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "train_start_rss_mib": at_train[0] if at_train else float("nan"), **out}


def rss_mib() -> float:
    """This process's resident memory now (Linux ``/proc/self/status``), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=REPO_ROOT / "runs" / "demo", help="a `searche1 demo` output folder")
    ap.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "searchqa")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--arm", choices=["copy", "reuse"], help=argparse.SUPPRESS)  # a child process's one arm
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "ofsd_teacher_memory.json")
    a = ap.parse_args()
    if a.arm:
        print("RESULT " + json.dumps(arm(a.demo, a.data, a.arm == "reuse")))
        return
    for need in (a.demo / "warmup" / "config.json", a.demo / "index", a.data / "train"):
        if not need.exists():
            sys.exit(f"{need} is missing (fix: run `make demo` first, or pass --demo RUN and --data DIR)")
    runs: dict[str, list[dict]] = {"copy": [], "reuse": []}
    for rep in range(a.repeats):
        for name in ("copy", "reuse") if rep % 2 == 0 else ("reuse", "copy"):
            proc = subprocess.run([sys.executable, __file__, "--arm", name, "--demo", str(a.demo), "--data",
                                   str(a.data)], capture_output=True, text=True, check=True)
            res = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
            runs[name].append(res)
            log(f"repeat {rep + 1} {name}: RSS at training start {res['train_start_rss_mib']:.0f} MiB, peak "
                f"{res['peak_rss_mib']:.0f} MiB, pairs {res['ofsd/pairs']:.0f}, "
                f"KL {res.get('ofsd/kl_first', float('nan')):.4f} → {res.get('ofsd/kl_last', float('nan')):.4f}, "
                f"{res['time/ofsd_s']:.1f} s")
    nan = float("nan")
    med = {k: statistics.median(r["peak_rss_mib"] for r in v) for k, v in runs.items()}
    start = {k: statistics.median(r["train_start_rss_mib"] for r in v) for k, v in runs.items()}
    sec = {k: statistics.median(r["time/ofsd_s"] for r in v) for k, v in runs.items()}
    print_table(f"OFSD phase memory (demo phase, bf16 teacher), medians of {a.repeats}",
                ["teacher", "RSS at training start MiB", "peak RSS MiB", "phase s", "pairs", "KL first → last"],
                [[k, rnd(start[k], 0), rnd(med[k], 0), rnd(sec[k], 1), runs[k][0]["ofsd/pairs"],
                  f"{runs[k][0].get('ofsd/kl_first', nan):.4f} → {runs[k][0].get('ofsd/kl_last', nan):.4f}"]
                 for k in ("copy", "reuse")])
    write_results(a.out, {"repeats": a.repeats,
                          "peak_rss_mib": {k: [rnd(r["peak_rss_mib"], 1) for r in v] for k, v in runs.items()},
                          "median_peak_rss_mib": {k: rnd(v, 1) for k, v in med.items()},
                          "train_start_rss_mib": {k: [rnd(r["train_start_rss_mib"], 1) for r in v]
                                                  for k, v in runs.items()},
                          "median_train_start_rss_mib": {k: rnd(v, 1) for k, v in start.items()},
                          "saved_at_train_start_mib": rnd(start["copy"] - start["reuse"], 1),
                          "median_phase_s": {k: rnd(v, 2) for k, v in sec.items()},
                          "metrics": {k: {m: rnd(x, 5) for m, x in v[0].items() if m.startswith("ofsd/")}
                                      for k, v in runs.items()}},
                  packages=("torch", "transformers"))


if __name__ == "__main__":
    main()
