"""Paper-scale projection (issue 7): hours per Search-E1 round for a 3B policy on 8 GPUs, from per-token costs
measured on ONE device with a model of the target's shape (random bf16 weights: costs do not depend on the values).

    python benchmarks/projection.py [--shape qwen2.5-3b|tiny] [--device cuda] [--engine hf|vllm] [--gpus 8]
                                    [--config configs/paper-qwen2.5-3b.yaml] [--out benchmarks/results/projection.json]
    python benchmarks/projection.py --costs benchmarks/results/projection_h100.json --out ...   # re-plan only

Measured here (median of 3 after a warm-up):

* ``prefill_tps``  prompt tokens/s of a forward over ``--batch`` × ``--prompt`` tokens (no grad, KV cache built);
* ``decode_tps``   generated tokens/s of ``--batch`` sequences writing ``--decode`` tokens each, prefill excluded
                   (HF ``generate``; with ``--engine vllm`` also vLLM ``LLM.generate`` with ``ignore_eos``, in its
                   own engine process, on the same prompts and batch: both are written, with their ratio, and the
                   projection uses vLLM's);
* ``forward_tps``  tokens/s of a no-grad forward (the trainer's log-prob re-scoring, the OFSD teacher pass);
* ``train_tps``    tokens/s of forward + backward + AdamW step on ``--micro`` × ``--seq`` token micro-batches
                   (full fine-tuning, gradient checkpointing off).

Both take the trainer's path (searche1.scoring): the LM head only at the share of columns that hold policy tokens
(``--policy-tokens`` over the episode's tokens), and fp32 weights with bf16 autocast on a GPU (a trained policy
keeps fp32 weights: searche1.models.load_policy). Runs before 2026-11-28 computed full logits there, on bf16 weights
(as the trainer then did, losing AdamW updates below bf16's rounding step).

The plan (questions per step, G, steps per round, OFSD questions, K, epochs) comes from ``--config``. What no
measurement here can give is stated as an assumption, with a flag: tokens per episode (``--prompt-tokens``,
``--policy-tokens``, ``--searches`` × ``topk`` × ``max_doc_tokens``), the share of OFSD groups that yield a pair
(``--pair-rate``), and **linear data-parallel scaling** over ``--gpus`` (no communication cost: optimistic for the
gradient all-reduce, pessimistic for rollouts, whose per-GPU batch is larger than measured). Episode cost = prompt and
retrieved tokens prefilled once (KV cache across turns) + policy tokens decoded; training cost = every token of the
sequence through forward + backward. ``--costs FILE`` measures nothing: it takes the per-token costs (and the device,
shape and decode engine) of an earlier run's JSON and applies this file's plan and arithmetic to them, so a change in
the trainer's work per step (e.g. no re-scoring pass with one PPO epoch) is re-projected without a GPU; the output
names the file the costs came from.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, REPO_ROOT, log, print_table, rnd, write_results  # noqa: E402

SHAPES = {  # Qwen2.5-3B-Instruct's config.json (public), and a tiny one for smoke tests
    "qwen2.5-3b": dict(arch="qwen2", vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True,
                       max_position_embeddings=32768, rope_theta=1e6),
    "tiny": dict(arch="qwen2", vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=4096),
}


@dataclass
class Costs:
    """Per-token throughput on one device (tokens/s)."""

    prefill_tps: float
    decode_tps: float
    forward_tps: float
    train_tps: float


@dataclass
class Plan:
    """One Search-E1 round: a GRPO stage, then an OFSD phase; token counts per episode."""

    grpo_steps: int
    questions_per_step: int
    group_size: int
    ppo_epochs: int
    ofsd_questions: int
    ofsd_samples: int
    ofsd_epochs: int
    pair_rate: float  # pairs per OFSD question (most_different: one per mixed group)
    prompt_tokens: int
    policy_tokens: int
    retrieved_tokens: int
    recompute_logprobs: bool = True  # vLLM sampling: the trainer re-scores each sequence once (ppo_epochs > 1)


def project(c: Costs, p: Plan, gpus: int) -> dict[str, float]:
    """Hours per round, split by phase, under linear data-parallel scaling over ``gpus`` (module docstring)."""
    seq = p.prompt_tokens + p.policy_tokens + p.retrieved_tokens
    episode_s = (p.prompt_tokens + p.retrieved_tokens) / c.prefill_tps + p.policy_tokens / c.decode_tps
    grpo_eps = p.grpo_steps * p.questions_per_step * p.group_size
    ofsd_eps = p.ofsd_questions * p.ofsd_samples
    pairs = p.ofsd_questions * p.pair_rate
    out = {
        "grpo_rollout_h": grpo_eps * episode_s,
        # with one PPO epoch the loss forward's log-probs are the "old" ones (searche1.old_logprobs.fuse_rescore)
        "grpo_rescore_h": grpo_eps * seq / c.forward_tps if p.recompute_logprobs and p.ppo_epochs > 1 else 0.0,
        "grpo_train_h": grpo_eps * seq * p.ppo_epochs / c.train_tps,
        "ofsd_rollout_h": ofsd_eps * episode_s,
        "ofsd_teacher_h": pairs * (seq + p.retrieved_tokens) / c.forward_tps,  # privileged prompt ~ one more trace
        "ofsd_train_h": pairs * seq * p.ofsd_epochs / c.train_tps,
    }
    out = {k: v / gpus / 3600 for k, v in out.items()}
    out["grpo_h"] = out["grpo_rollout_h"] + out["grpo_rescore_h"] + out["grpo_train_h"]
    out["ofsd_h"] = out["ofsd_rollout_h"] + out["ofsd_teacher_h"] + out["ofsd_train_h"]
    out["round_h"] = out["grpo_h"] + out["ofsd_h"]
    out["grpo_step_s"] = out["grpo_h"] * 3600 / p.grpo_steps
    return out


def plan_from_config(path: Path, args: argparse.Namespace) -> Plan:
    from searche1.config import load_config
    from searche1.pipeline import PipelineConfig

    cfg = load_config(PipelineConfig, path)
    r = cfg.rollout
    return Plan(grpo_steps=cfg.grpo.steps, questions_per_step=cfg.grpo.questions_per_step,
                group_size=cfg.grpo.group_size, ppo_epochs=cfg.grpo.ppo_epochs, ofsd_questions=cfg.ofsd.questions,
                ofsd_samples=cfg.ofsd.samples_per_question, ofsd_epochs=cfg.ofsd.epochs, pair_rate=args.pair_rate,
                prompt_tokens=args.prompt_tokens, policy_tokens=args.policy_tokens,
                retrieved_tokens=args.searches * r.topk * r.max_doc_tokens)


def _median(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build_model(shape: str, device: str, folder: Path | None = None, vocab_size: int | None = None):
    """A ``shape`` model with random weights (seeded), bf16 on a GPU; saved to ``folder`` if given. ``vocab_size``
    replaces the shape's (to pair the body with another tokenizer: benchmarks/decode_compare.py --shape)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    kw = {k: v for k, v in SHAPES[shape].items() if k != "arch"}
    if vocab_size is not None:
        kw["vocab_size"] = vocab_size
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = Qwen2ForCausalLM(Qwen2Config(**kw, torch_dtype=dtype)).to(dtype)
    if folder is not None:
        model.save_pretrained(folder)
    return model


def measure(model, device: str, batch: int, prompt: int, decode: int, micro: int, seq: int,
            policy_frac: float = 1.0) -> Costs:
    """Per-token costs; the forward and train passes take the trainer's path (:func:`searche1.scoring.
    masked_logprobs`: the LM head at the ``policy_frac`` share of columns that hold policy tokens)."""
    import torch

    from searche1.scoring import masked_logprobs

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    V = model.config.vocab_size
    ids = torch.randint(0, V, (batch, prompt), device=device)

    def prefill():
        with torch.no_grad():
            model(input_ids=ids, use_cache=True)
        sync()

    def generate(n):
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=True, pad_token_id=0)
        sync()

    t_prefill = _median(prefill)
    t_gen = _median(lambda: generate(decode))
    # re-scoring and training take the trainer's path: fp32 weights (searche1.models.load_policy keeps them for a
    # trained policy), bf16 compute by autocast where the weights were bf16 (a GPU)
    amp = next(model.parameters()).dtype == torch.bfloat16
    model.float()
    dev_type = device.split(":")[0]
    train_ids = torch.randint(0, V, (micro, seq), device=device)
    train_attn = torch.ones_like(train_ids)
    mask = torch.zeros((micro, seq - 1), device=device)
    mask[:, -max(1, round((seq - 1) * policy_frac)):] = 1  # how many columns counts, not where they are
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7)

    def forward():
        with torch.no_grad(), torch.autocast(dev_type, dtype=torch.bfloat16, enabled=amp):
            masked_logprobs(model, train_ids, train_attn, mask, device=device)
        sync()

    def train_step():
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=amp):
            logp = masked_logprobs(model, train_ids, train_attn, mask, device=device)
        (-(logp * mask).sum() / mask.sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()

    t_fwd = _median(forward)
    model.train()
    t_train = _median(train_step)
    return Costs(prefill_tps=batch * prompt / t_prefill, decode_tps=batch * decode / max(1e-9, t_gen - t_prefill),
                 forward_tps=micro * seq / t_fwd, train_tps=micro * seq / t_train)


def vllm_decode_tps(folder: Path, tokenizer_vocab: int, batch: int, prompt: int, decode: int) -> float:
    import random

    from vllm import LLM, SamplingParams

    llm = LLM(model=str(folder), tokenizer=None, skip_tokenizer_init=True, dtype="bfloat16",
              gpu_memory_utilization=0.5, max_model_len=prompt + decode + 8)
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(tokenizer_vocab) for _ in range(prompt)]} for _ in range(batch)]
    sp = SamplingParams(max_tokens=decode, min_tokens=decode, ignore_eos=True, detokenize=False)
    one = SamplingParams(max_tokens=1, ignore_eos=True, detokenize=False)
    t_pre = _median(lambda: llm.generate(prompts, one, use_tqdm=False))
    t_all = _median(lambda: llm.generate(prompts, sp, use_tqdm=False))
    return batch * decode / max(1e-9, t_all - t_pre)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-3b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="decode measurement")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "paper-qwen2.5-3b.yaml")
    ap.add_argument("--batch", type=int, default=256, help="prefill/decode batch (the paper config's rollout.batch_size)")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--prompt-tokens", type=int, default=250, help="assumed: system + question prompt")
    ap.add_argument("--policy-tokens", type=int, default=300, help="assumed: tokens the policy writes per episode")
    ap.add_argument("--searches", type=int, default=2, help="assumed: searches per episode")
    ap.add_argument("--pair-rate", type=float, default=0.3, help="assumed: OFSD pairs per re-sampled question")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "projection.json")
    ap.add_argument("--costs", type=Path, help="re-plan from this earlier result's measured costs (no measurement)")
    a = ap.parse_args()
    if a.costs is not None:
        replan(a)
        return

    import torch

    import importlib.util

    if a.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        log("vLLM is not installed: decode measured with HF generate")
        a.engine = "hf"
    folder = a.out.parent / "projection-model" if a.engine == "vllm" else None  # vLLM loads weights from disk
    log(f"building a random {a.shape} model on {a.device}")
    model = build_model(a.shape, a.device, folder)
    n_params = sum(p.numel() for p in model.parameters())
    plan = plan_from_config(a.config, a)
    policy_frac = plan.policy_tokens / (plan.prompt_tokens + plan.policy_tokens + plan.retrieved_tokens)
    costs = measure(model, a.device, a.batch, a.prompt, a.decode, a.micro, a.seq, policy_frac)
    engine, decode = "hf", {"hf": rnd(costs.decode_tps, 1)}
    if a.engine == "vllm":
        try:
            del model
            torch.cuda.empty_cache()
            costs.decode_tps = vllm_decode_tps(folder, SHAPES[a.shape]["vocab_size"], a.batch, a.prompt, a.decode)
            engine = "vllm"
            decode.update(vllm=rnd(costs.decode_tps, 1), vllm_over_hf=rnd(costs.decode_tps / decode["hf"], 2))
        except ImportError as e:
            log(f"vLLM not importable ({e}): decode measured with HF generate")
    hours = project(costs, plan, a.gpus)
    device_name = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "cpu"
    print_table(f"Per-token costs on one {device_name}, {a.shape} ({n_params / 1e9:.2f}B params, random weights)",
                ["prefill tok/s", "decode tok/s (" + engine + ")", "forward tok/s", "train tok/s"],
                [[rnd(v, 1) for v in asdict(costs).values()]])
    print_hours(f"Projected hours per round on {a.gpus} such GPUs (linear scaling; plan from {a.config.name})", hours)
    write_results(a.out, {"device": device_name, "shape": a.shape, "params": n_params, "decode_engine": engine,
                          "gpus": a.gpus, "costs": {k: rnd(v, 1) for k, v in asdict(costs).items()},
                          "decode_tps_by_engine": decode,
                          "plan": asdict(plan), "hours": {k: rnd(v, 3) for k, v in hours.items()},
                          "measure": {**{k: getattr(a, k) for k in ("batch", "prompt", "decode", "micro", "seq")},
                                      "policy_frac": rnd(policy_frac, 3)}},
                  packages=("torch", "transformers", "vllm"))


def print_hours(title: str, hours: dict[str, float]) -> None:
    print_table(title, ["GRPO rollout", "GRPO re-score", "GRPO train", "OFSD", "round", "2 rounds", "s per GRPO step"],
                [[rnd(hours["grpo_rollout_h"], 2), rnd(hours["grpo_rescore_h"], 2), rnd(hours["grpo_train_h"], 2),
                  rnd(hours["ofsd_h"], 2), rnd(hours["round_h"], 2), rnd(2 * hours["round_h"], 2),
                  rnd(hours["grpo_step_s"], 1)]])


def replan(a: argparse.Namespace) -> None:
    """``--costs FILE``: this plan and arithmetic over an earlier run's measured per-token costs."""
    import json

    try:
        old = json.loads(a.costs.read_text())
        costs = Costs(**old["costs"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"--costs {a.costs}: not a projection result with a 'costs' object of "
                 f"{', '.join(Costs.__dataclass_fields__)} ({e!r}); give a benchmarks/results/projection*.json")
    plan = plan_from_config(a.config, a)
    hours = project(costs, plan, a.gpus)
    print_hours(f"Projected hours per round on {a.gpus} GPUs from the costs in {a.costs.name} "
                f"({old.get('device', '?')}; plan from {a.config.name})", hours)
    write_results(a.out, {"device": old.get("device"), "shape": old.get("shape"), "params": old.get("params"),
                          "decode_engine": old.get("decode_engine"), "gpus": a.gpus,
                          "costs": asdict(costs), "costs_from": {"file": a.costs.name,
                                                                 "timestamp": old.get("timestamp"),
                                                                 "measure": old.get("measure")},
                          "plan": asdict(plan), "hours": {k: rnd(v, 3) for k, v in hours.items()}})


if __name__ == "__main__":
    main()
