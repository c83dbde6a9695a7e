"""HF vs vLLM engine on long, decode-bound episodes (issue 7): the same questions, batch and rollout settings, with
turns of up to ``--turn-tokens`` tokens, so per-turn work (retrieval, tokenising blocks) weighs little.

    python benchmarks/decode_compare.py --model DIR --data DIR --out FILE.json [--index DIR] [--batch 512]
                                        [--vllm-multiprocessing] [--vllm-kwargs JSON]

Without ``--index`` a BM25 index of ``DATA/corpus.jsonl`` is built first (6 s for the searchqa corpus on a 2-core
CPU), so this needs nothing from an earlier run.

``--shape qwen2.5-3b`` runs both engines on a model of that shape (benchmarks/projection.py's ``SHAPES``) with random
weights and ``--model``'s tokenizer (its vocabulary replaces the shape's: 2.8B parameters with SmolLM2's 49,152
tokens), where the GPU's work, not the host's per-token work, sets the pace. A random model never writes a stop
string, so every episode is one turn of ``--turn-tokens`` tokens.

vLLM runs in-process by default (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as the colocated training engine must, to push
weights by reference); ``--vllm-multiprocessing`` gives it its own engine process (vLLM's default), so that its
output processing (detokenising, log-prob objects) overlaps the GPU's work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import host_profile, log  # noqa: E402
from gpu_check import rollout_tps  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for a in ("--model", "--data", "--out"):
        ap.add_argument(a, required=True)
    ap.add_argument("--index", default=None, help="a searche1 index folder (default: BM25 of DATA/corpus.jsonl)")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--turn-tokens", type=int, default=256)
    ap.add_argument("--vllm-multiprocessing", action="store_true", help="vLLM's engine in its own process")
    ap.add_argument("--device", default="cuda", help="of the HF engine (cpu: a smoke test of this script)")
    ap.add_argument("--shape", default=None, help="random-weight model of this shape (e.g. qwen2.5-3b, tiny)")
    ap.add_argument("--vllm-kwargs", default="{}", help="JSON: extra vllm.LLM keywords (what vllm_check.py started "
                    "with, e.g. enforce_eager)")
    ap.add_argument("--profile", action="store_true", help="a host (cProfile) table of one more vLLM run, default "
                    "settings, to OUT.profile.txt")
    args = ap.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if args.vllm_multiprocessing else "0"
    from searche1.data.qa import load_qa_files
    from searche1.models import ModelConfig, load_policy, resolve_model_path
    from searche1.retrieval.config import RetrievalConfig, make_retriever
    from searche1.rollout.hf_engine import HFEngine
    from searche1.rollout.tokens import generation_eos_ids
    from searche1.rollout.types import RolloutConfig
    from searche1.rollout.vllm_colocated import load_llm
    from searche1.rollout.vllm_engine import VLLMEngine

    path = str(resolve_model_path(args.model))
    if args.shape:  # a random-weight body of that shape, with the model's tokenizer (saved: vLLM loads from disk)
        from projection import build_model
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        path = tempfile.mkdtemp(prefix=f"decode-compare-{args.shape}-")
        log(f"a random {args.shape} model with {args.model}'s tokenizer in {path}")
        body = build_model(args.shape, args.device, Path(path), vocab_size=len(tok))
        shape_params = sum(p.numel() for p in body.parameters())
        del body  # loaded again from the folder below, as the HF engine of a real run would
        tok.save_pretrained(path)
    cfg = RolloutConfig(max_turn_tokens=args.turn_tokens, max_total_tokens=2048, max_searches=4, topk=3,
                        max_doc_tokens=64, batch_size=args.batch)
    index = Path(args.index) if args.index else Path(tempfile.mkdtemp(prefix="decode-compare-")) / "index"
    if not args.index:
        from searche1.retrieval.index import build_index

        log("BM25 index of the corpus"); build_index(Path(args.data) / "corpus.jsonl", index, overwrite=True,
                                                     show_progress=False)
    retriever = make_retriever(RetrievalConfig(index=index))
    pool = [q for exs in load_qa_files(sorted((Path(args.data) / "dev").glob("*.jsonl"))).values() for q in exs]
    qs = (pool * (args.batch // len(pool) + 1))[:args.batch]
    res = {"model": args.model, "batch": args.batch, "turn_tokens": args.turn_tokens,
           "vllm_multiprocessing": args.vllm_multiprocessing}
    if args.shape:
        res.update(shape=args.shape, shape_params=shape_params, weights="random")
    model, tok = load_policy(ModelConfig(name_or_path=path, device=args.device, dtype="bfloat16"))
    hf = HFEngine(model, tok, retriever, cfg)
    rollout_tps(hf, qs[:8], seed=1)
    log("HF"); res["hf"] = rollout_tps(hf, qs)
    Path(args.out).write_text(json.dumps(res, indent=1))
    eos = generation_eos_ids(model.generation_config)
    del model, hf
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the HF engine's blocks back to the GPU before vLLM measures free memory
    llm = load_llm(path, **{"gpu_memory_utilization": 0.4, "dtype": "bfloat16", "max_model_len": 2048,
                            **json.loads(args.vllm_kwargs)})
    v = VLLMEngine(llm, tok, retriever, replace(cfg, vllm_logprobs=True), eos_token_ids=eos)
    rollout_tps(v, qs[:8], seed=1)
    # sampler log-probs for every episode (as measured in session 5), for 1 in 8 (the default while the trainer
    # re-scores), for none: vLLM's front end does ~8x less per token without them; then the default without
    # per-request seeds (vLLM's sampler loops over seeded requests, one kernel launch each, every step)
    for key, frac, seeds in (("vllm", True, True), ("vllm_default_logprobs", None, True),
                             ("vllm_no_logprobs", False, True),
                             ("vllm_default_logprobs_no_request_seeds", None, False)):
        v.cfg = replace(cfg, vllm_logprobs=frac, vllm_request_seeds=seeds)
        log(f"vLLM, rollout.vllm_logprobs={frac}, vllm_request_seeds={seeds}"); res[key] = rollout_tps(v, qs)
        res[f"{key}_over_hf"] = round(res[key]["tokens_per_s"] / res["hf"]["tokens_per_s"], 2)
        Path(args.out).write_text(json.dumps(res, indent=1))
    if args.profile:
        v.cfg = replace(cfg, vllm_logprobs=None)
        host_profile(lambda: v.run(qs, seed=3), Path(args.out).with_suffix(".profile.txt"))
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
