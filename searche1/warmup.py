"""Format warm-up: a short supervised bootstrap that teaches a small model the search-agent tag protocol.

This is **not part of Search-E1**. The paper starts GRPO from models that already follow the Search-R1 protocol
when prompted; tiny models such as SmolLM2-135M do not (0 of 160 greedy episodes well formed, DESIGN §4), so RL
would get no reward signal at all. The warm-up fine-tunes on scripted demonstrations first, and is documented as a
separate, optional step.

A demonstration is built from a training question, its gold answers and the retriever, with no model involved:

1. the inference prompt (:func:`searche1.protocol.build_prompt`, exactly as the rollout engine builds it);
2. a policy turn `` <search> {question} </search>`` (the first query is the question itself);
3. the retriever's top-k as an ``<information>`` block, formatted and capped exactly like
   :meth:`searche1.rollout.hf_engine.HFEngine.info_ids` (``format_information`` with ``max_doc_tokens``; over
   ``max_info_tokens`` ids the passages are cut, never the closing tag; a test asserts equality with the engine);
4. if a gold answer appears in the passages *as the model sees them* (the decoded, truncated block;
   :func:`~searche1.retrieval.metrics.has_answer`), the turn `` <answer> {that gold answer} </answer>`` + EOS;
5. otherwise, where the data gives a bridge (below) and ``max_hops`` allows, another search turn, its information
   block, and back to 4. A question whose answer is never seen is skipped (``answer_unfound=False``, default) or
   answered anyway with its first gold answer.

Bridge queries (hop h >= 2), kept simple, and only used when the bridge entity is *visible* in the passages
retrieved so far, so a model could in principle have written the same query:

* synthetic world (``metadata["chain"]``, one ``{subject, relation, object}`` step per hop): query
  ``"{chain[h-1].subject} {relation with '_' -> ' '}"``, e.g. ``"Velmora Quist birthplace"``;
* HotpotQA-style (``metadata["gold_doc_ids"]`` and a retriever that exposes its passages): the title of a gold
  passage not retrieved yet, e.g. ``"Adriana Trigiani"``.

Each segment is tokenised on its own (``add_special_tokens=False``; the prompt gets the tokenizer's BOS when it adds
one, :func:`searche1.rollout.tokens.encode_prompts`), so a demonstration has exactly the token layout
of a rollout: prompt ids (no loss), policy-turn ids (loss), information ids (no loss), ... Training
(:func:`train_warmup`) puts the loss on policy tokens only. An optional short ``<think>`` sentence
(``think_prob``, seeded per question) varies the surface.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from searche1 import protocol
from searche1.data.types import QAExample
from searche1.errors import ConfigError
from searche1.retrieval.base import Retriever
from searche1.retrieval.metrics import has_answer
from searche1.rollout.tokens import encode, info_ids, prompt_ids
from searche1.rollout.types import RolloutConfig

log = logging.getLogger(__name__)

__all__ = [
    "Demo",
    "DemoSet",
    "WarmupConfig",
    "build_demonstrations",
    "collate",
    "sample_questions",
    "run_warmup",
    "train_warmup",
]

IGNORE_INDEX = -100
# tags are blanked out of the visible text before answer matching: normalisation would glue "Paris.</information>"
# into "parisinformation"
_TAG_RE = re.compile(r"</?(?:search|answer|information|think)>")
WARMUP_FILE = "warmup.json"

_THINK_FIRST = (
    "I should look this up.",
    "Let me search for the question first.",
    "I need more information to answer this.",
)
_THINK_BRIDGE = (
    "The passages mention {bridge}; I should look that up.",
    "I need to know more about {bridge}.",
    "Next I will search for {bridge}.",
)
_THINK_ANSWER = (
    "The passages say the answer is {answer}.",
    "Found it: {answer}.",
    "The information answers the question.",
)
_THINK_UNFOUND = ("The passages do not say it directly; my best answer is {answer}.",)


# ------------------------------------------------------------------------------------------------------- config


@dataclass
class WarmupConfig:
    num_examples: int = field(default=240, metadata={
        "help": "demonstrations to train on (questions whose answer is never retrieved are replaced by others)"})
    epochs: int = field(default=1, metadata={"help": "passes over the demonstrations"})
    batch_size: int = field(default=4, metadata={"help": "demonstrations per optimizer step (one padded batch)"})
    lr: float = field(default=5e-5, metadata={"help": "AdamW peak learning rate"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps of linear LR warm-up, then linear "
                                                               "decay"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 disables)"})
    max_len: int = field(default=768, metadata={"help": "longer demonstrations are dropped (never truncated)"})
    seed: int = field(default=0, metadata={"help": "question sampling, think sentences, batch order"})
    max_hops: int = field(default=2, metadata={"help": "searches per demonstration at most (bridge hops need "
                                                       "metadata: chain or gold_doc_ids)"})
    train_layers: int = field(default=0, metadata={
        "help": "train only the last N decoder layers (a CPU budget option); 0 = every weight"})
    share_prompt: bool = field(default=True, metadata={
        "help": "run the prompt prefix a batch's demonstrations share (the instructions) once and the rows on its "
                "KV cache (same loss and gradients; off under gradient checkpointing)"})
    think_prob: float = field(default=0.0, metadata={"help": "probability of a short <think> sentence per turn"})
    answer_unfound: bool = field(default=False, metadata={
        "help": "answer with the gold even when it was never retrieved (default: skip the question)"})
    bf16: Literal["auto", "on", "off"] = field(default="auto", metadata={
        "help": "bf16 autocast; auto = on GPUs and on CPUs with native bf16 (weights stay fp32)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})

    def validate(self) -> None:
        for name in ("num_examples", "epochs", "batch_size", "max_len", "max_hops"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1")
        if self.lr <= 0:
            raise ConfigError("lr: must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError("warmup_ratio: must be in [0, 1)")
        if not 0 <= self.think_prob <= 1:
            raise ConfigError("think_prob: must be in [0, 1]")
        if self.max_grad_norm < 0:
            raise ConfigError("max_grad_norm: must be >= 0 (0 disables clipping)")


# -------------------------------------------------------------------------------------------------- demonstrations


@dataclass
class Demo:
    """One scripted episode as token segments ``(ids, is_policy)``; the first segment is the prompt."""

    example_id: str
    question: str
    answer: str
    dataset: str
    queries: list[str]
    segments: list[tuple[list[int], bool]]
    found: bool = True  # a gold answer was visible in the retrieved passages

    @property
    def searches(self) -> int:
        return len(self.queries)

    @property
    def input_ids(self) -> list[int]:
        return [t for ids, _ in self.segments for t in ids]

    @property
    def policy_mask(self) -> list[int]:
        return [int(pol) for ids, pol in self.segments for _ in ids]

    @property
    def labels(self) -> list[int]:
        """Input ids on policy tokens, ``-100`` on prompt and information tokens (HF shifts them itself)."""
        return [t if pol else IGNORE_INDEX for ids, pol in self.segments for t in ids]

    @property
    def prompt_ids(self) -> list[int]:
        return list(self.segments[0][0])

    @property
    def response_ids(self) -> list[int]:
        return [t for ids, _ in self.segments[1:] for t in ids]

    def __len__(self) -> int:
        return sum(len(ids) for ids, _ in self.segments)


class DemoSet(list):
    """A list of :class:`Demo` with ``stats``: counts of what :func:`build_demonstrations` built and skipped."""

    def __init__(self, demos: Sequence[Demo] = (), stats: dict | None = None) -> None:
        super().__init__(demos)
        self.stats: dict = stats or {}


def _doc_titles(retriever: Any) -> dict[str, str] | None:
    """id -> title of the retriever's passages, when it exposes them (BM25/dense; through ``.inner`` wrappers)."""
    for _ in range(4):
        passages = getattr(retriever, "passages", None)
        if passages is not None:
            try:
                return {p.id: p.title for p in passages}
            except (AttributeError, TypeError):
                return None
        retriever = getattr(retriever, "inner", None)
        if retriever is None:
            return None
    return None


def _visible(text: str, needle: str) -> bool:
    return bool(needle.strip()) and has_answer(text, [needle])


def _bridge_query(ex: QAExample, hop: int, seen_text: str, seen_ids: set[str], queries: list[str],
                  titles: Callable[[], Mapping[str, str] | None]) -> tuple[str, str] | None:
    """(query, bridge entity) for search number ``hop + 1`` (``hop`` >= 1), or None; see the module docstring."""
    meta = ex.metadata or {}
    chain = meta.get("chain")
    if isinstance(chain, list) and chain:
        if hop >= len(chain) or not isinstance(chain[hop], dict):
            return None
        subject = str(chain[hop].get("subject", "")).strip()
        relation = str(chain[hop].get("relation", "")).replace("_", " ").strip()
        if not _visible(seen_text, subject):
            return None
        query = f"{subject} {relation}".strip()
        return (query, subject) if query not in queries else None
    gold = meta.get("gold_doc_ids")
    if isinstance(gold, list) and gold:
        table = titles()
        if not table:
            return None
        for doc_id in gold:
            title = table.get(str(doc_id), "")
            if str(doc_id) in seen_ids or not title or title in queries:
                continue
            if _visible(seen_text, title):
                return title, title
    return None


@dataclass
class _State:
    ex: QAExample
    rng: random.Random
    segments: list[tuple[list[int], bool]]
    query: str
    turn_prefix: str = ""  # optional think sentence in front of the next search
    queries: list[str] = field(default_factory=list)
    seen_text: str = ""
    seen_ids: set[str] = field(default_factory=set)


def build_demonstrations(
    examples: Sequence[QAExample],
    retriever: Retriever,
    tokenizer: Any,
    rollout_cfg: RolloutConfig | None = None,
    *,
    max_hops: int = 2,
    seed: int = 0,
    think_prob: float = 0.0,
    answer_unfound: bool = False,
    doc_titles: Mapping[str, str] | None = None,
) -> DemoSet:
    """Scripted protocol demonstrations for ``examples`` (see the module docstring); one batched retrieval per hop.

    Returns a :class:`DemoSet` in the order of ``examples`` (skipped ones left out) whose ``stats`` count
    ``questions``, ``demos``, ``multi_hop`` (demos with >= 2 searches), ``answered_unfound``, ``skipped_unfound``,
    ``searches`` and ``per_dataset`` demos. ``doc_titles`` (id -> title) overrides the titles taken from the
    retriever's passages for HotpotQA-style bridges. ``max_hops`` is capped at ``rollout_cfg.max_searches``.
    """
    cfg = rollout_cfg or RolloutConfig()
    max_hops = min(max_hops, cfg.max_searches)  # never show more searches than the prompt allows
    if max_hops < 1:
        raise ValueError("max_hops and rollout max_searches must be >= 1 (a demonstration always searches once)")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id (fix: set tokenizer.eos_token)")
    title_cache: dict[str, Mapping[str, str] | None] = {}

    def titles() -> Mapping[str, str] | None:
        if "t" not in title_cache:
            title_cache["t"] = doc_titles if doc_titles is not None else _doc_titles(retriever)
        return title_cache["t"]

    def think(rng: random.Random, options: tuple[str, ...], **kw: str) -> str:
        if think_prob > 0 and rng.random() < think_prob:
            sentence = rng.choice(options).format(**kw)
            return f" {protocol.THINK_OPEN} {sentence} {protocol.THINK_CLOSE}"
        return ""

    def answer_segment(st: _State, answer: str, options: tuple[str, ...]) -> None:
        text = think(st.rng, options, answer=answer) + f" {protocol.ANSWER_OPEN} {answer} {protocol.ANSWER_CLOSE}"
        st.segments.append((encode(tokenizer, text) + [eos], True))

    demos: list[tuple[int, Demo]] = []
    stats = {"questions": len(examples), "demos": 0, "multi_hop": 0, "answered_unfound": 0, "skipped_unfound": 0,
             "searches": 0, "per_dataset": {}}
    active: list[tuple[int, _State]] = []
    for i, ex in enumerate(examples):
        rng = random.Random(f"{seed}:{ex.id}:{ex.question}")  # str seeds are stable across processes
        st = _State(ex=ex, rng=rng, segments=[(prompt_ids(tokenizer, ex.question, cfg), False)],
                    query=ex.question.strip())
        st.turn_prefix = think(rng, _THINK_FIRST)
        active.append((i, st))

    def finish(i: int, st: _State, answer: str, found: bool) -> None:
        demos.append((i, Demo(example_id=st.ex.id, question=st.ex.question, answer=answer, dataset=st.ex.dataset,
                              queries=list(st.queries), segments=st.segments, found=found)))

    for hop in range(max_hops):
        if not active:
            break
        results = retriever.search([st.query for _, st in active], cfg.topk)
        if len(results) != len(active):
            raise RuntimeError(f"retriever returned {len(results)} result lists for {len(active)} queries")
        next_active: list[tuple[int, _State]] = []
        for (i, st), hits in zip(active, results):
            turn = st.turn_prefix + f" {protocol.SEARCH_OPEN} {st.query} {protocol.SEARCH_CLOSE}"
            st.segments.append((encode(tokenizer, turn), True))
            st.queries.append(st.query)
            info = info_ids(tokenizer, hits, cfg)
            st.segments.append((info, False))
            st.seen_text += " " + _TAG_RE.sub(" ", tokenizer.decode(info, skip_special_tokens=True))
            st.seen_ids.update(h.id for h in hits)
            answer = next((a for a in st.ex.answers if _visible(st.seen_text, a)), None)
            if answer is not None:
                answer_segment(st, answer, _THINK_ANSWER)
                finish(i, st, answer, True)
                continue
            nxt = None
            if hop + 1 < max_hops:
                nxt = _bridge_query(st.ex, hop + 1, st.seen_text, st.seen_ids, st.queries, titles)
            if nxt is not None:
                st.query, bridge = nxt
                st.turn_prefix = think(st.rng, _THINK_BRIDGE, bridge=bridge)
                next_active.append((i, st))
            elif answer_unfound:
                answer_segment(st, st.ex.answers[0], _THINK_UNFOUND)
                finish(i, st, st.ex.answers[0], False)
                stats["answered_unfound"] += 1
            else:
                stats["skipped_unfound"] += 1
        active = next_active

    ordered = [d for _, d in sorted(demos, key=lambda x: x[0])]
    stats["demos"] = len(ordered)
    stats["multi_hop"] = sum(d.searches >= 2 for d in ordered)
    stats["searches"] = sum(d.searches for d in ordered)
    for d in ordered:
        stats["per_dataset"][d.dataset] = stats["per_dataset"].get(d.dataset, 0) + 1
    return DemoSet(ordered, stats)


# -------------------------------------------------------------------------------------------------------- training


def collate(demos: Sequence[Demo], pad_id: int):
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (B, T); labels are -100 off policy tokens."""
    import torch

    T = max(len(d) for d in demos)
    ids = torch.full((len(demos), T), pad_id, dtype=torch.long)  # (B, T)
    attn = torch.zeros((len(demos), T), dtype=torch.long)  # (B, T)
    labels = torch.full((len(demos), T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for r, d in enumerate(demos):
        n = len(d)
        ids[r, :n] = torch.tensor(d.input_ids)
        attn[r, :n] = 1
        labels[r, :n] = torch.tensor(d.labels)
    return ids, attn, labels


def _use_bf16(setting: str | bool, device) -> bool:
    from searche1.models import cpu_has_native_bf16

    if setting in (True, "on"):
        return True
    if setting in (False, "off"):
        return False
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def _lr_lambda(total: int, warm: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return f


def train_warmup(model, tokenizer, demos: Sequence[Demo], cfg: WarmupConfig | None = None, *,
                 progress: bool = True) -> dict:
    """Supervised fine-tuning on ``demos`` with the loss on policy tokens only; returns metrics.

    AdamW on the trainable parameters, linear warm-up then linear decay, gradient clipping, one right-padded batch
    of ``batch_size`` demos per step (the loss is the mean over the batch's policy tokens), bf16 autocast per
    ``cfg.bf16``; with ``share_prompt`` the instructions every prompt of the batch starts with run once
    (:func:`searche1.scoring.shared_prefix_len`). Demonstrations longer than ``max_len`` are dropped, not
    truncated. The model's train/eval mode is restored at the end.
    """
    import torch
    from tqdm.auto import tqdm

    from searche1.scoring import can_share_prefix, masked_logprobs, shared_prefix_len

    cfg = cfg or WarmupConfig()
    cfg.validate()
    keep = [d for d in demos if len(d) <= cfg.max_len]
    too_long = len(demos) - len(keep)
    if not keep:
        raise ValueError(f"no demonstration fits max_len={cfg.max_len} (of {len(demos)}; fix: raise max_len)")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (fix: load it with trainable=True)")
    if any(p.dtype in (torch.bfloat16, torch.float16) for p in params):
        log.warning("training low-precision weights directly: small AdamW updates may be lost to rounding "
                    "(fix: load the model in float32; bf16 autocast is used for speed where available)")
    device = next(model.parameters()).device
    bf16 = _use_bf16(cfg.bf16, device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    share = cfg.share_prompt and can_share_prefix(model)

    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    per_epoch = math.ceil(len(keep) / cfg.batch_size)
    total = per_epoch * cfg.epochs
    warm = round(cfg.warmup_ratio * total)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, warm))

    was_training = model.training
    model.train()
    losses: list[float] = []
    tokens = policy_tokens = 0
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc="warm-up", unit="step", disable=not progress)
    try:
        for _epoch in range(cfg.epochs):
            order = list(range(len(keep)))
            rng.shuffle(order)
            for s in range(per_epoch):
                batch = [keep[j] for j in order[s * cfg.batch_size : (s + 1) * cfg.batch_size]]
                ids, attn, labels = (t.to(device) for t in collate(batch, pad_id))
                # the mean cross-entropy of the policy tokens (as HF's ``labels`` loss), the LM head only at them
                on = (labels[:, 1:] != IGNORE_INDEX).float()  # (B, T-1): position t predicts ids[:, t+1]
                prefix = shared_prefix_len([d.prompt_ids for d in batch]) if share else 0
                logp = masked_logprobs(model, ids, attn, on, device=device, autocast=bf16, prefix=prefix)
                loss = -(logp * on).sum() / on.sum().clamp(min=1.0)
                loss.backward()
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                tokens += int(attn.sum())
                policy_tokens += int((labels != IGNORE_INDEX).sum())
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        bar.close()
        model.train(was_training)
    seconds = time.perf_counter() - t0
    k = max(1, len(losses) // 10)
    return {
        "warmup/steps": len(losses),
        "warmup/demos_used": len(keep),
        "warmup/skipped_too_long": too_long,
        "warmup/loss_first": sum(losses[:k]) / k,
        "warmup/loss_last": sum(losses[-k:]) / k,
        "warmup/losses": [round(x, 4) for x in losses],
        "warmup/tokens": tokens,
        "warmup/policy_tokens": policy_tokens,
        "warmup/bf16": bf16,
        "time/warmup_s": seconds,
        "time/warmup_s_per_step": seconds / max(1, len(losses)),
        "warmup/tokens_per_s": tokens / seconds if seconds > 0 else float("nan"),
    }


# ---------------------------------------------------------------------------------------------------------- driver


def sample_questions(data_files: Sequence[str | Path], n: int | None, seed: int = 0) -> list[QAExample]:
    """All questions of ``data_files`` in a seeded, balanced order: each file shuffled, then taken round-robin
    (so a mix of NQ and HotpotQA is even whatever the file sizes); the first ``n`` (all with ``None``)."""
    from searche1.data.qa import load_qa

    rng = random.Random(seed)
    pools = []
    for f in data_files:
        exs = load_qa(f)
        rng.shuffle(exs)
        pools.append(exs)
    out: list[QAExample] = []
    for j in range(max((len(p) for p in pools), default=0)):
        out.extend(p[j] for p in pools if j < len(p))
    return out if n is None else out[:n]


def run_warmup(model_spec: str | Path, index_dir_or_retriever: str | Path | Retriever, data_files: Sequence[str | Path],
               out_dir: str | Path, cfg: WarmupConfig | None = None, *, rollout_cfg: RolloutConfig | None = None,
               overwrite: bool = False, progress: bool = True) -> Path:
    """Warm up ``model_spec`` (HF folder or embedded model name) and save it to ``out_dir``; returns ``out_dir``.

    Questions are drawn by :func:`sample_questions` until ``cfg.num_examples`` demonstrations are built (skipped
    questions are replaced). The model is loaded in float32, trainable (all weights, or the top
    ``model.train_layers``; bf16 only as autocast).
    ``out_dir`` is written atomically: the model (safetensors), the tokenizer and ``warmup.json`` (config, demo
    counts, training metrics, one example demonstration as text).
    """
    from searche1.config import to_dict
    from searche1.checkpoint import save_policy
    from searche1.io import atomic_dir, check_out_dir, write_json
    from searche1.models import ModelConfig, load_policy

    cfg = cfg or WarmupConfig()
    cfg.validate()
    rollout_cfg = rollout_cfg or RolloutConfig()
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite=overwrite, replaces=WARMUP_FILE)  # before any work
    if isinstance(index_dir_or_retriever, (str, Path)):
        from searche1.retrieval.index import load_retriever

        retriever = load_retriever(index_dir_or_retriever)
        retriever_desc = str(index_dir_or_retriever)
    else:
        retriever, retriever_desc = index_dir_or_retriever, type(index_dir_or_retriever).__name__
    candidates = sample_questions(data_files, None, cfg.seed)
    if not candidates:
        raise ValueError(f"no questions in {list(map(str, data_files))}")

    model, tok = load_policy(ModelConfig(name_or_path=str(model_spec), dtype="float32", device=cfg.device,
                                         train_layers=cfg.train_layers), trainable=True)
    t0 = time.perf_counter()
    demos: list[Demo] = []
    stats: dict[str, Any] = {}
    pos = 0
    while len(demos) < cfg.num_examples and pos < len(candidates):
        need = cfg.num_examples - len(demos)
        chunk = candidates[pos : pos + max(8, int(need * 1.5))]
        pos += len(chunk)
        built = build_demonstrations(chunk, retriever, tok, rollout_cfg, max_hops=cfg.max_hops, seed=cfg.seed,
                                     think_prob=cfg.think_prob, answer_unfound=cfg.answer_unfound)
        demos.extend(built)
        for k, v in built.stats.items():
            if k != "per_dataset":
                stats[k] = stats.get(k, 0) + v
    demos = demos[: cfg.num_examples]
    if not demos:
        raise ValueError("no demonstration could be built: no gold answer appears in the retrieved passages "
                         "(fix: check the index matches the data, or set answer_unfound)")
    stats["used"] = len(demos)
    stats["used_multi_hop"] = sum(d.searches >= 2 for d in demos)
    stats["used_per_dataset"] = {}
    for d in demos:
        stats["used_per_dataset"][d.dataset] = stats["used_per_dataset"].get(d.dataset, 0) + 1
    stats["build_seconds"] = round(time.perf_counter() - t0, 3)
    log.info("warm-up demonstrations: %s", stats)
    if len(demos) < cfg.num_examples:
        log.warning("only %d of %d demonstrations could be built", len(demos), cfg.num_examples)

    metrics = train_warmup(model, tok, demos, cfg, progress=progress)
    if hasattr(model, "merge_and_unload"):  # a peft model: save plain HF weights
        model = model.merge_and_unload()
    model.eval()
    example = demos[0]
    record = {
        "format": "searche1-warmup",
        "version": 1,
        "base_model": str(model_spec),
        "retriever": retriever_desc,
        "data_files": [str(f) for f in data_files],
        "config": to_dict(cfg),
        "rollout": asdict(rollout_cfg),
        "demos": stats,
        "metrics": metrics,
        "example": {"prompt": tok.decode(example.prompt_ids, skip_special_tokens=False),
                    "response": tok.decode(example.response_ids, skip_special_tokens=False)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with atomic_dir(out_dir, overwrite=overwrite, replaces=WARMUP_FILE) as tmp:  # --overwrite: only a warm-up
        save_policy(model, tok, tmp)  # HF layout; LoRA merged
        write_json(tmp / WARMUP_FILE, record)
    return out_dir
