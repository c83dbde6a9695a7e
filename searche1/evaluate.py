"""Evaluation: EM/F1 per benchmark for the agent and the paper's two non-agent baselines.

Modes (all greedy):

* ``agent``      multi-turn search episodes (the trained policy's protocol); answers are taken strictly from
                 ``<answer>`` tags in the response.
* ``naive-rag``  retrieve once with the question, put the top-k passages in the prompt, answer in one turn.
* ``direct``     no retrieval: answer from the model's own knowledge.

For the baselines the answer is the tagged answer when present, else the first line of the response
(:func:`searche1.protocol.lenient_answer`): format compliance is not what they measure. ``valid_format`` is reported
for every mode with the agent protocol's rule (:func:`searche1.protocol.is_valid_format`).

Output JSON: ``{"datasets": {name: {em, f1, n, searches, valid_format, response_tokens, stop_reasons}},
"average": {em, f1, ...}, "settings": {...}}``; the average is the unweighted mean over datasets, as in the paper.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from searche1 import protocol
from searche1.data.types import QAExample
from searche1.errors import ConfigError
from searche1.rewards import exact_match, f1_score
from searche1.rollout.types import Episode, RolloutConfig
from searche1.rollout.tokens import encode_prompts

Mode = Literal["agent", "naive-rag", "direct"]
MODES = ("agent", "naive-rag", "direct")


@dataclass
class EvalConfig:
    mode: Mode = field(default="agent", metadata={"help": "agent | naive-rag | direct"})
    limit: int | None = field(default=None, metadata={"help": "questions per dataset (first N); None = all"})
    offset: int = field(default=0, metadata={"help": "skip the first N questions of each dataset (a disjoint "
                                                     "slice: --offset 40 --limit 60 = questions 41-100)"})
    batch_size: int = field(default=32, metadata={"help": "episodes decoded together"})
    max_turn_tokens: int = field(default=128, metadata={"help": "new tokens per turn"})
    max_searches: int = field(default=4, metadata={"help": "search budget per question (agent mode)"})
    topk: int = field(default=3, metadata={"help": "passages per search"})
    max_doc_tokens: int = field(default=96, metadata={"help": "tokens kept of each passage"})
    turn_start: Literal["free", "constrained"] = field(default="free", metadata={
        "help": "constrained: turns may only open with <search>/<answer>/<think> (agent mode)"})
    engine: Literal["hf", "vllm", "vllm-server"] = field(default="hf", metadata={
        "help": "hf: our batched decoding loop on the HF model; vllm: a vLLM engine built on the model folder (GPU); "
                "vllm-server: a `vllm serve` of the same model at vllm_url"})
    vllm_url: str | None = field(default=None, metadata={"help": "vllm-server: base URL, e.g. http://127.0.0.1:8001"})
    vllm_gpu_memory_utilization: float = field(default=0.85, metadata={
        "help": "vllm: fraction of GPU memory for the engine (nothing else shares the GPU in an evaluation)"})
    vllm_kwargs: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "vllm: extra keywords for vllm.LLM, e.g. {enforce_eager: true}"})

    def validate(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ConfigError("limit: must be >= 1 or null")
        if self.offset < 0:
            raise ConfigError("offset: must be >= 0")
        if self.engine != "hf" and self.turn_start == "constrained":
            raise ConfigError("turn_start: 'constrained' needs the hf engine's logits hook (fix: engine: hf, or "
                              "turn_start: free)")
        self.rollout().validate()

    def rollout(self) -> RolloutConfig:
        """The rollout settings of this evaluation: greedy, no sampler log-probs asked of vLLM (nothing uses them)."""
        return RolloutConfig(greedy=True, batch_size=self.batch_size, max_turn_tokens=self.max_turn_tokens,
                             max_searches=self.max_searches if self.mode == "agent" else 0, topk=self.topk,
                             max_doc_tokens=self.max_doc_tokens,
                             turn_start=self.turn_start if self.mode == "agent" else "free", engine=self.engine,
                             vllm_url=self.vllm_url, vllm_gpu_memory_utilization=self.vllm_gpu_memory_utilization,
                             vllm_kwargs=dict(self.vllm_kwargs), vllm_logprobs=False)


def score_episode(ep: Episode, mode: str, clean_text: str) -> tuple[str | None, float, float]:
    pred = ep.answer if mode == "agent" else protocol.lenient_answer(clean_text)
    if pred is None:
        return None, 0.0, 0.0
    return pred, exact_match(pred, ep.answers), f1_score(pred, ep.answers)


def summarize(episodes: list[Episode], mode: str, tokenizer) -> dict:
    """Per-dataset metrics of scored episodes (``ep.metrics['em'/'f1']`` set by :func:`evaluate`)."""
    n = len(episodes)
    if n == 0:
        return {"n": 0}
    stops = Counter(ep.stop_reason.value if ep.stop_reason else "none" for ep in episodes)
    return {
        "em": round(sum(ep.metrics["em"] for ep in episodes) / n, 4),
        "f1": round(sum(ep.metrics["f1"] for ep in episodes) / n, 4),
        "n": n,
        "searches": round(sum(ep.searches for ep in episodes) / n, 3),
        "valid_format": round(sum(ep.metrics["valid_format"] for ep in episodes) / n, 4),
        "response_tokens": round(sum(ep.num_policy_tokens for ep in episodes) / n, 1),
        "stop_reasons": dict(sorted(stops.items())),
    }


def resume_key(model: str | Path, cfg: EvalConfig) -> str:
    """What an evaluation's finished datasets are valid for: the model folder (its path and the time its files were
    written, so a retrained model in the same folder is not mixed in) and every setting."""
    path = Path(model).expanduser()
    stamp = max((f.stat().st_mtime_ns for f in path.iterdir() if f.is_file()), default=0) if path.is_dir() else 0
    return json.dumps({"model": str(path.resolve()) if path.exists() else str(model), "stamp": stamp,
                       "settings": cfg.__dict__}, sort_keys=True, default=str)


class _Partial:
    """Finished datasets of an interrupted evaluation, one JSON line each (``X.partial.jsonl`` beside ``X.json``),
    appended and fsynced as each dataset ends; a cut-off last line is ignored. Records are reused only under the
    same :func:`resume_key` and the same selected question ids."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key

    @staticmethod
    def ids(exs: list[QAExample]) -> str:
        import hashlib

        return hashlib.sha256("\n".join(e.id for e in exs).encode()).hexdigest()[:16]

    def load(self) -> dict[str, dict]:
        done: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line being written when the evaluation stopped
                if isinstance(r, dict) and r.get("key") == self.key:
                    done[r["dataset"]] = r
            if not done:  # another model or other settings: stale, start afresh
                self.path.unlink()
        return done

    def add(self, name: str, exs: list[QAExample], summary: dict, samples: list[dict]) -> None:
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        rec = {"key": self.key, "dataset": name, "ids": self.ids(exs), "summary": summary, "samples": samples}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


def evaluate(model, tokenizer, retriever, datasets: dict[str, list[QAExample]], cfg: EvalConfig,
             *, progress: bool = True, samples_out: Path | None = None, engine=None,
             resume: str | None = None) -> dict:
    """Run ``cfg.mode`` on every dataset and return the results dict (see module docstring). ``engine``: a rollout
    engine built with ``cfg.rollout()`` (a vLLM one: ``factory.saved_model_engine``, or a run's engine
    ``.with_config``); by default our HF engine on ``model``. ``resume`` (a :func:`resume_key`, with
    ``samples_out``): each finished dataset is kept in ``X.partial.jsonl`` beside the samples file, so an
    interrupted evaluation run again with the same model and settings skips the datasets it finished; the file is
    removed when the evaluation completes.

    Datasets smaller than a batch are decoded together: consecutive datasets join one engine call until it holds
    ``cfg.batch_size`` questions (a dev set of 7 × 8 questions runs as batches of 40 and 16, not 7 batches of 8:
    1.30× faster on this CPU in ``benchmarks/eval_batching.py``, the same greedy answers), and are then scored and
    saved one by one. A dataset of a batch or more runs alone, as before."""
    from tqdm.auto import tqdm

    from searche1.rollout.hf_engine import HFEngine

    rcfg = cfg.rollout()
    if engine is None:
        engine = HFEngine(model, tokenizer, retriever, rcfg)
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    samples: dict[str, list[dict]] = {}

    def select(exs: list[QAExample]) -> list[QAExample]:
        exs = exs[cfg.offset:]
        return exs[: cfg.limit] if cfg.limit else exs

    total = sum(len(select(v)) for v in datasets.values())
    bar = tqdm(total=total, desc=f"eval {cfg.mode}", disable=not progress, unit="q")
    partial = None
    if resume is not None and samples_out is not None:
        partial = _Partial(samples_out.parent / samples_out.name.replace(".samples.jsonl", ".partial.jsonl"), resume)
    done = partial.load() if partial else {}
    resumed: list[str] = []
    pending: list[tuple[str, list[QAExample], list | None]] = []  # (name, questions, prompts) of the next call

    def run_pending() -> None:
        exs_all = [e for _, exs, _ in pending for e in exs]
        prompts_all = None if cfg.mode == "agent" else [p for _, _, ps in pending for p in ps]  # type: ignore
        eps_all = engine.run(exs_all, prompts=prompts_all, progress=bar.update)
        at = 0
        for name, exs, _ in pending:
            eps, at = eps_all[at:at + len(exs)], at + len(exs)
            rows = []
            for ep in eps:
                clean = tokenizer.decode(ep.response_ids, skip_special_tokens=True)
                pred, em, f1 = score_episode(ep, cfg.mode, clean)
                ep.metrics.update(em=em, f1=f1, valid_format=float(protocol.is_valid_format(clean)))
                rows.append({"dataset": name, "id": ep.example_id, "question": ep.question, "gold": ep.answers,
                             "pred": pred, "em": em, "searches": ep.searches, "stop": ep.stop_reason.value,
                             "response": ep.response_text})
            results[name], samples[name] = summarize(eps, cfg.mode, tokenizer), rows
            if partial is not None:
                partial.add(name, exs, results[name], rows)
        pending.clear()

    for name, exs in datasets.items():
        exs = select(exs)
        if name in done and done[name]["ids"] == _Partial.ids(exs):
            results[name] = done[name]["summary"]
            samples[name] = done[name]["samples"]
            bar.update(len(exs))
            resumed.append(name)
            if progress:
                bar.write(f"{name}: finished earlier, taken from {partial.path}")  # type: ignore[union-attr]
            continue
        prompts = None
        if cfg.mode != "agent":
            passages = [None] * len(exs)
            if cfg.mode == "naive-rag":
                hits = retriever.search([e.question for e in exs], cfg.topk)
                passages = protocol.format_information_batch(hits, tokenizer, cfg.max_doc_tokens)
            prompts = encode_prompts(tokenizer, [protocol.build_baseline_prompt(e.question, tokenizer, passages=p,
                                                                                chat=rcfg.chat)
                                                 for e, p in zip(exs, passages)])
        pending.append((name, exs, prompts))
        if sum(len(x[1]) for x in pending) >= cfg.batch_size:
            run_pending()
    if pending:
        run_pending()
    bar.close()
    results = {name: results[name] for name in datasets if name in results}  # the datasets' order
    names = [k for k, v in results.items() if v.get("n")]
    avg = {k: round(sum(results[d][k] for d in names) / len(names), 4)
           for k in ("em", "f1", "searches", "valid_format", "response_tokens")} if names else {}
    out = {"mode": cfg.mode, "datasets": results, "average": avg,
           "settings": {**cfg.__dict__, "seconds": round(time.perf_counter() - t0, 1),
                        **({"resumed_datasets": resumed} if resumed else {})}}
    if samples_out is not None:
        samples_out.parent.mkdir(parents=True, exist_ok=True)
        with open(samples_out, "w", encoding="utf-8") as f:
            for name in results:
                for row in samples[name]:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if partial is not None:
        partial.path.unlink(missing_ok=True)
    return out


def markdown_table(results: dict | list[dict], labels: list[str] | None = None) -> str:
    """One row per dataset, EM (and searches) per result set; the last row is the average."""
    runs = results if isinstance(results, list) else [results]
    labels = labels or [r.get("mode", f"run{i}") for i, r in enumerate(runs)]
    names = list(dict.fromkeys(n for r in runs for n in r["datasets"]))
    head = "| dataset | n | " + " | ".join(f"{lb} EM | {lb} srch | {lb} fmt" for lb in labels) + " |"
    sep = "|---|---:|" + "---:|---:|---:|" * len(runs)
    lines = [head, sep]
    for n in names + ["average"]:
        cells = []
        count = ""
        for r in runs:
            d = r["average"] if n == "average" else r["datasets"].get(n, {})
            count = count or str(d.get("n", ""))
            cells += [f"{d.get('em', float('nan')):.3f}", f"{d.get('searches', float('nan')):.2f}",
                      f"{d.get('valid_format', float('nan')):.2f}"]
        lines.append(f"| {'**average**' if n == 'average' else n} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
