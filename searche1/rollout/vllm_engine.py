"""Multi-turn search episodes sampled with vLLM, behind the same interface as :class:`HFEngine`.

``VLLMEngine(llm, tokenizer, retriever, cfg).run(examples, seed=..., prompts=..., progress=...)`` returns the same
:class:`Episode` records as the HF engine (prompt_ids, response_ids, policy_mask, sampler log-probs, queries, answer,
stop_reason, response_text, turns) with the same protocol. Per turn:

1. every live episode is sent to vLLM at once as **token ids** (``{"prompt_token_ids": prompt + response so far}``),
   so nothing is ever decoded and re-tokenised; with prefix caching (on by default in vLLM V1) the shared prefix is
   not recomputed. Stop strings ``</search>`` / ``</answer>``, EOS ids, ``max_tokens = min(max_turn_tokens,
   max_total_tokens - length)``, one seed per episode and turn (see :func:`turn_seed`);
2. each turn is cut by the HF engine's own per-token rule (EOS, then a stop string in the last 16 tokens, then the
   total budget, then the turn budget) and judged by ``HFEngine._end_turn`` (reused, not copied);
3. all searches of the turn go to the retriever in **one batched call** (``hf_engine._safe_search``: a failing batch
   is retried query by query, so only the failing episodes end with ``retrieval_error``); each block is tokenised
   once (:func:`tokens.info_ids`) and appended with policy-mask 0 / log-prob 0. The post-retrieval checks (error ->
   RETRIEVAL_ERROR, block would not fit -> MAX_TOKENS) are inline in ``HFEngine._run_batch``, so they are replicated
   here (a dozen lines, :meth:`VLLMEngine._attach_blocks`); ``tests/test_vllm_engine.py`` checks the two engines
   produce identical records on the same scripted turns.

With ``rollout.vllm_stream_turns`` the colocated engine drops the per-turn barrier: requests go in one by one and
come back as they finish (:meth:`VLLMEngine._run_streaming`), so an episode's next turn starts while the others
are still decoding; the episodes are the same.

Two backends: a colocated ``vllm.LLM`` (``llm.generate`` with one ``SamplingParams`` per request), or a
``vllm serve`` OpenAI-compatible server through :class:`VLLMServerClient` (``/v1/completions`` with ``prompt`` as a
token id list, ``return_tokens_as_token_ids``). vLLM is imported lazily, only inside the functions that need it.

How it departs from the HF engine:

* **Sampler log-probs are vLLM's, not the trainer's.** They come from vLLM's kernels (bf16 weights, other attention
  and matmul kernels, batch-dependent reductions), so they differ slightly from what the trainer computes for the
  same tokens. The trainer should recompute the log-probs of the sampled tokens with its own model and log the gap
  as ``rollout/logprob_mismatch``; the recorded ones are only the behaviour policy's estimate. So by default only
  1 episode in 8 asks vLLM for them (``rollout.vllm_logprobs``; ``Episode.sampler_logprobs`` says which): the gap
  is estimated on those, and vLLM's front end skips its costly per-token log-prob objects for the rest.
* **Which distribution.** We ask for ``logprobs_mode="processed_logprobs"`` (``vllm_colocated.load_llm``, or ``vllm serve
  --logprobs-mode processed_logprobs``; the flag exists since vLLM 0.10.0, and after vllm PR 22387 (TRL requires
  0.10.2 for it) means log-softmax after temperature *and* top-k/top-p). With ``top_p == 1`` (training) that equals
  the HF engine's temperature-scaled full distribution; with ``top_p < 1`` it is renormalised over the nucleus (HF
  records the full distribution). The default ``raw_logprobs`` is the untempered model (equal only at temperature
  1); V1 releases before 0.10 only had raw log-probs. Greedy (temperature 0) gives temperature-1 log-probs, like HF.
* Per-request seeds (:func:`turn_seed`) make an episode's tokens independent of its batch mates, vLLM's scheduling
  and the rank split, as HF's per-episode generators do, but the streams differ: same seed, other samples than HF.
  ``rollout.vllm_request_seeds: false`` leaves sampling to vLLM's own generator instead (no per-request loop in
  its sampler; reproducible only with identical batches).
* ``cfg.batch_size`` is not used (vLLM schedules its own batches); ``max_batch`` optionally caps episodes in flight.
  ``turn_start: constrained`` (a logits hook) is HF-only and rejected here.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from searche1 import protocol
from searche1.config import ConfigError
from searche1.data.types import QAExample
from searche1.retrieval.base import Hit, Retriever
from searche1.rollout import tokens
from searche1.rollout.hf_engine import HFEngine, _safe_search
from searche1.rollout.types import Episode, RolloutConfig, StopReason, logprobs_wanted

log = logging.getLogger(__name__)

__all__ = ["LOGPROBS_MODE", "VLLMEngine", "VLLMServerClient", "turn_seed"]

_STREAM_RUNS = itertools.count()  # request ids of streamed rollouts: searche1-RUN-EPISODE-TURN, unique per process
STREAM_SEARCH_BATCH = 32
"""Streamed turns: finished searches wait until this many are ready (or as many as are decoding) and go to the
retriever in one batch; one call per engine step cost ~50% more CPU on 512 search episodes (this 2-core CPU)."""

LOGPROBS_MODE = "processed_logprobs"
"""vLLM ``logprobs_mode`` we request: log-softmax of the temperature-scaled (and top-k/top-p filtered) logits."""


@dataclass(frozen=True, slots=True)
class TurnRequest:
    """One generation request: continue ``prompt_ids`` for at most ``max_tokens`` tokens with ``seed``; ``logprobs``:
    return the sampled tokens' log-probs (else they are recorded as 0)."""

    prompt_ids: list[int]
    max_tokens: int
    seed: int | None
    logprobs: bool = True


@dataclass(slots=True)
class TurnSample:
    """What came back for one request: sampled ids, the log-prob of each, vLLM's finish reason."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str | None = None


def turn_seed(seed: int | None, episode: int, turn: int) -> int | None:
    """Seed of one request: a 63-bit hash of (run seed, global episode index, turn index); None if unseeded. Keyed by
    index, not example id, so the G copies of a GRPO group differ. (HFEngine instead keeps one generator per episode,
    ``hf_engine.episode_seed``, across turns; vLLM takes one seed per request, so each turn needs its own.)"""
    if seed is None:
        return None
    digest = hashlib.blake2b(f"{seed}/{episode}/{turn}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _vllm_version() -> str:
    try:
        import vllm
    except ImportError:
        return "not installed"
    return str(getattr(vllm, "__version__", "unknown"))


# --------------------------------------------------------------------------------------------------------- engine


class VLLMEngine:
    """Rollout engine over a colocated ``vllm.LLM`` or a :class:`VLLMServerClient` (same ``run`` as HFEngine)."""

    # Reused from the HF engine as is: records a turn on its episode and decides its fate (needs .cfg and .tok).
    _end_turn = HFEngine._end_turn

    def __init__(self, llm: Any, tokenizer: Any, retriever: Retriever, cfg: RolloutConfig | None = None, *,
                 eos_token_ids: Sequence[int] = (), max_batch: int | None = None) -> None:
        self.llm = llm
        self.tok = tokenizer
        self.retriever = retriever
        self.cfg = cfg or RolloutConfig()
        if self.cfg.turn_start == "constrained":
            raise ConfigError("turn_start: 'constrained' needs the HF engine's logits hook (fix: turn_start: free)")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 or None, got {max_batch}")
        self.max_batch = max_batch
        self._ends_with_stop = tokens.StopCheck(tokenizer)  # HFEngine's stop-string rule
        # EOS: the tokenizer's plus the model's generation_config ids (pass them, as HFEngine reads them off the model)
        self.eos_ids = {tokenizer.eos_token_id, *eos_token_ids} - {None}
        mode = getattr(getattr(getattr(llm, "llm_engine", None), "model_config", None), "logprobs_mode", None)
        if isinstance(mode, str) and mode != LOGPROBS_MODE:
            log.warning("vLLM logprobs_mode is %r, not %r: recorded log-probs are not those of the temperature-scaled "
                        "policy (see searche1.rollout.vllm_engine)", mode, LOGPROBS_MODE)

    def with_config(self, cfg: RolloutConfig) -> VLLMEngine:
        """The same vLLM backend (and so the same weights) with other rollout settings: a run's dev evaluations."""
        return VLLMEngine(self.llm, self.tok, self.retriever, cfg, eos_token_ids=sorted(self.eos_ids),
                          max_batch=self.max_batch)

    def prompt_ids(self, question: str) -> list[int]:
        return tokens.prompt_ids(self.tok, question, self.cfg)

    def info_ids(self, hits: list[Hit]) -> list[int]:
        return tokens.info_ids(self.tok, hits, self.cfg)

    def sampling_kwargs(self) -> dict[str, Any]:
        """Settings shared by every request (``SamplingParams`` keywords, also valid ``/v1/completions`` fields);
        ``logprobs`` is set per request (:func:`request_logprobs`). top_k, min_p and repetition_penalty are sent
        neutral: a ``vllm serve`` fills fields a request leaves out from the model's generation_config.json (vLLM
        0.20 ``CompletionRequest.to_sampling_params``; Qwen2.5-Instruct's sets top_k 20, repetition_penalty 1.05),
        which the HF engine and the trainer's re-scoring do not apply."""
        cfg = self.cfg
        return {
            "n": 1,
            "temperature": 0.0 if cfg.greedy else cfg.temperature,
            "top_p": 1.0 if cfg.greedy else cfg.top_p,
            "top_k": 0,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "stop": list(protocol.TURN_STOP_STRINGS),
            "stop_token_ids": sorted(self.eos_ids),
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
        }

    # ------------------------------------------------------------------------------------------------------------
    def run(
        self,
        examples: Sequence[QAExample],
        *,
        seed: int | None = None,
        first_index: int = 0,
        prompts: Sequence[list[int]] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[Episode]:
        """One episode per example (repeat an example G times for a GRPO group), as :meth:`HFEngine.run`: episode
        ``i`` is seeded by ``(seed, first_index + i, turn)`` (a data-parallel rank passes the global index of its
        first episode); ``prompts`` (token ids) replaces the agent prompt; ``progress(n)``: episodes done per turn."""
        if prompts is None:
            prompts = tokens.prompt_batch(self.tok, [e.question for e in examples], self.cfg)
        frac = self.cfg.vllm_logprob_fraction()
        eps = [Episode(example_id=e.id, question=e.question, answers=list(e.answers), dataset=e.dataset,
                       prompt_ids=list(prompts[k]), sampler_logprobs=logprobs_wanted(first_index + k, frac))
               for k, e in enumerate(examples)]
        if self.cfg.vllm_stream_turns and callable(getattr(getattr(self.llm, "llm_engine", None), "add_request",
                                                          None)):
            self._run_streaming(eps, seed, first_index, progress)
        else:
            step = self.max_batch or max(1, len(eps))
            for start in range(0, len(eps), step):
                self._run_chunk(eps, list(range(start, min(start + step, len(eps)))), seed, first_index, progress)
        for ep in eps:
            ep.response_text = self.tok.decode(ep.response_ids, skip_special_tokens=False)
            ep.answer = protocol.extract_answer(ep.response_text) if ep.stop_reason == StopReason.ANSWERED else None
        return eps

    def _run_chunk(self, eps: list[Episode], live: list[int], seed: int | None, first_index: int,
                   progress: Callable[[int], None] | None) -> None:
        total = {i: len(eps[i].prompt_ids) for i in live}
        while live:
            reqs = [self._request(eps[i], total[i], seed, first_index + i) for i in live]
            samples = self._generate(reqs)
            if len(samples) != len(reqs):
                raise RuntimeError(f"vLLM returned {len(samples)} outputs for {len(reqs)} requests")
            pending = []
            for i, s in zip(live, samples):
                turn_tokens, turn_lps, end = self._cut_turn(s, total[i])
                total[i] += len(turn_tokens)
                if self._end_turn(eps[i], turn_tokens, turn_lps, end):
                    pending.append(i)
            nxt = self._attach_blocks(eps, pending, total)
            if progress:
                progress(len(live) - len(nxt))
            live = nxt

    def _request(self, ep: Episode, total: int, seed: int | None, index: int) -> TurnRequest:
        """The request for ``ep``'s next turn (``total``: its length so far; ``index``: its global index)."""
        cfg = self.cfg
        return TurnRequest(ep.prompt_ids + ep.response_ids,
                           max(1, min(cfg.max_turn_tokens, cfg.max_total_tokens - total)),
                           turn_seed(seed, index, ep.turns) if cfg.vllm_request_seeds else None, ep.sampler_logprobs)

    def _run_streaming(self, eps: list[Episode], seed: int | None, first_index: int,
                       progress: Callable[[int], None] | None) -> None:
        """``rollout.vllm_stream_turns``: the colocated engine's requests go in one by one
        (``llm_engine.add_request``) and come back as they finish (``llm_engine.step()``), so an episode's next
        turn is submitted as soon as its search returns while the others keep decoding; with ``max_batch`` a new
        episode starts as soon as one ends. Finished searches go to the retriever in batches
        (:data:`STREAM_SEARCH_BATCH`). Episodes are the same as with the per-turn batches: requests are seeded per
        episode and turn (:func:`turn_seed`), and turns are cut and judged by the same code."""
        engine = self.llm.llm_engine
        shared = self.sampling_kwargs()
        waiting = collections.deque(range(len(eps)))
        cap = self.max_batch or len(eps)
        total: dict[int, int] = {}
        inflight: dict[str, tuple[int, TurnRequest]] = {}
        searching: list[int] = []  # episodes whose search waits to go out with others
        run = next(_STREAM_RUNS)

        def submit(i: int) -> None:
            r = self._request(eps[i], total[i], seed, first_index + i)
            rid = f"searche1-{run}-{i}-{eps[i].turns}"
            engine.add_request(rid, {"prompt_token_ids": r.prompt_ids}, _sampling_params(shared, r, final_only=True))
            inflight[rid] = (i, r)

        def fill() -> None:  # episodes in flight or waiting for a search count against max_batch
            while waiting and len(inflight) + len(searching) < cap:
                i = waiting.popleft()
                total[i] = len(eps[i].prompt_ids)
                submit(i)

        try:
            fill()
            while inflight or searching:
                ended = 0
                if inflight:
                    if not engine.has_unfinished_requests():
                        raise RuntimeError(f"vLLM has no unfinished requests, but {len(inflight)} of ours never "
                                           "finished (were they aborted elsewhere?)")
                    for out in engine.step():
                        if not out.finished or out.request_id not in inflight:
                            continue
                        i, r = inflight.pop(out.request_id)
                        turn_tokens, turn_lps, end = self._cut_turn(_turn_sample(r, out.outputs[0]), total[i])
                        total[i] += len(turn_tokens)
                        if self._end_turn(eps[i], turn_tokens, turn_lps, end):
                            searching.append(i)
                        else:
                            ended += 1
                # searches go out together once there are enough of them, or once as many wait as decode
                if searching and (len(searching) >= STREAM_SEARCH_BATCH or len(searching) >= len(inflight)):
                    batch = searching[:]
                    searching.clear()
                    nxt = self._attach_blocks(eps, batch, total)
                    ended += len(batch) - len(nxt)
                    for i in nxt:
                        submit(i)
                fill()
                if progress and ended:
                    progress(ended)
        finally:
            if inflight:  # an error mid-rollout: leave nothing of ours running in a reused engine
                engine.abort_request(list(inflight))

    def _generate(self, reqs: list[TurnRequest]) -> list[TurnSample]:
        if isinstance(self.llm, VLLMServerClient):
            return self.llm.generate(reqs, self.sampling_kwargs())
        return _generate_colocated(self.llm, reqs, self.sampling_kwargs())

    def _cut_turn(self, s: TurnSample, total: int) -> tuple[list[int], list[float], str]:
        """The turn's tokens cut by HFEngine's per-token rule, and how it ended (eos | stop | budget)."""
        cfg = self.cfg
        ids, lps = s.token_ids, s.logprobs
        # per token, in order: EOS, then a stop string, then the budget (total length, then turn length), which
        # ends the turn at token `budget` (the first, when the total budget is already spent)
        budget = max(0, min(cfg.max_total_tokens - total, cfg.max_turn_tokens) - 1)
        hit = self._ends_with_stop.first_end(ids, budget + 1, self.eos_ids)
        if hit is not None:
            k, end = hit
            return ids[:k + 1], lps[:k + 1], end
        if budget < len(ids):
            return ids[:budget + 1], lps[:budget + 1], "budget"
        # vLLM saw a stop string our 16-token window did not (very long stop tokens), or it ran out of max_tokens
        return list(ids), list(lps), "stop" if s.finish_reason == "stop" else "budget"

    def _attach_blocks(self, eps: list[Episode], pending: list[int], total: dict[int, int]) -> list[int]:
        """One batched retrieval for the turn's searches; append each block (mask 0). Returns the episodes that go
        on. Same checks as HFEngine._run_batch (replicated: they are inline there)."""
        if not pending:
            return []
        results = _safe_search(self.retriever, [eps[i].queries[-1] for i in pending], self.cfg.topk)
        nxt = []
        for i, res, block in zip(pending, results, tokens.info_blocks(self.tok, results, self.cfg)):
            ep = eps[i]
            if isinstance(res, Exception):
                ep.stop_reason = StopReason.RETRIEVAL_ERROR
                ep.metrics["retrieval_error"] = str(res)
                continue
            if total[i] + len(block) + 1 >= self.cfg.max_total_tokens:
                ep.stop_reason = StopReason.MAX_TOKENS
                continue
            ep.append(block, False)
            total[i] += len(block)
            nxt.append(i)
        return nxt


def _sampled_logprobs(token_ids: list[int], logprobs: Any) -> list[float]:
    """The sampled tokens' log-probs from vLLM's per-position ``{token_id: Logprob}`` dicts."""
    if logprobs is None:
        raise RuntimeError("vLLM returned no log-probs (SamplingParams.logprobs must be set)")
    if len(logprobs) != len(token_ids):
        raise RuntimeError(f"vLLM returned {len(logprobs)} log-prob entries for {len(token_ids)} tokens")
    out = []
    for t, d in zip(token_ids, logprobs):
        v = d[t]
        out.append(float(getattr(v, "logprob", v)))
    return out


def request_logprobs(req: TurnRequest) -> int | None:
    """``SamplingParams.logprobs`` / ``/v1/completions`` ``logprobs`` for one request: 1 (the sampled token's log-prob
    and the top-1; 0 returned nothing in early V1 releases) or None (no log-prob objects: vLLM's front end then does
    ~8x less per token, see rollout.vllm_logprobs)."""
    return 1 if req.logprobs else None


def _sampling_params(shared: dict[str, Any], r: TurnRequest, final_only: bool = False) -> Any:
    from vllm import SamplingParams

    sp = SamplingParams(**shared, max_tokens=r.max_tokens, seed=r.seed, logprobs=request_logprobs(r))
    if final_only:  # llm_engine.add_request: one output per request, when it finishes (LLM.generate sets this too)
        from vllm.sampling_params import RequestOutputKind

        sp.output_kind = RequestOutputKind.FINAL_ONLY
    return sp


def _turn_sample(r: TurnRequest, c: Any) -> TurnSample:
    """A vLLM ``CompletionOutput`` as a :class:`TurnSample` (log-probs 0 when the request asked for none)."""
    ids = [int(t) for t in c.token_ids]
    return TurnSample(ids, _sampled_logprobs(ids, c.logprobs) if r.logprobs else [0.0] * len(ids), c.finish_reason)


def _generate_colocated(llm: Any, reqs: list[TurnRequest], shared: dict[str, Any]) -> list[TurnSample]:
    params = [_sampling_params(shared, r) for r in reqs]
    outs = llm.generate([{"prompt_token_ids": r.prompt_ids} for r in reqs], sampling_params=params, use_tqdm=False)
    return [_turn_sample(r, ro.outputs[0]) for r, ro in zip(reqs, outs)]


# --------------------------------------------------------------------------------------------------------- server


class VLLMServerClient:
    """Thin client for a ``vllm serve`` OpenAI-compatible server; pass it as ``llm`` to :class:`VLLMEngine`.

    Each request is one ``POST /v1/completions`` with ``prompt`` = token ids, ``max_tokens``, ``seed``, ``stop``,
    ``logprobs: 1`` (or none, see :func:`request_logprobs`) and ``return_tokens_as_token_ids`` /
    ``return_token_ids`` (sampled ids come back exactly, never re-tokenised); requests of a turn run
    ``concurrency`` at a time (one seed per request, so no batching by prompt list; the server batches the requests
    in flight, so fewer than a turn's episodes leave it a smaller batch). Start the server with
    ``--logprobs-mode processed_logprobs`` (see the module docstring).

    Weights are reloaded **by path** (:meth:`reload_weights`): the trainer saves an HF checkpoint
    (``save_pretrained``, safetensors) to a directory the server can read, then calls ``reload_weights(dir)``. This
    uses vLLM's development endpoints, so the server must run with ``VLLM_SERVER_DEV_MODE=1`` (never expose such a
    server: ``/collective_rpc`` runs worker methods). Without them, restart the server on the new checkpoint.
    """

    def __init__(self, base_url: str, model: str | None = None, *, timeout: float = 600.0, concurrency: int = 256,
                 retries: int = 2, api_key: str | None = None, transport: Any = None) -> None:
        import httpx

        base = base_url.rstrip("/").removesuffix("/v1")
        self.base_url = base if base.startswith(("http://", "https://")) else "http://" + base
        self.model = model
        self.concurrency = max(1, concurrency)
        self.retries = retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # as many connections as requests in flight (httpx's default pool holds 100)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        self._http = httpx.Client(timeout=httpx.Timeout(timeout), transport=transport, headers=headers, limits=limits)

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, body: dict | None = None) -> Any:
        import httpx

        for attempt in range(self.retries + 1):
            try:
                r = self._http.post(self.base_url + path, json=body)
            except httpx.TransportError as e:
                if attempt == self.retries:
                    raise RuntimeError(f"vLLM server at {self.base_url} unreachable ({type(e).__name__}: {e}); "
                                       "start it with `vllm serve MODEL`") from e
                continue
            if r.status_code >= 500 and attempt < self.retries:
                continue
            return r
        raise AssertionError("unreachable")

    def _model_name(self) -> str:
        if self.model is None:
            r = self._http.get(self.base_url + "/v1/models")
            r.raise_for_status()
            self.model = r.json()["data"][0]["id"]
        return self.model

    def _complete(self, req: TurnRequest, shared: dict[str, Any]) -> TurnSample:
        body = {**shared, "model": self._model_name(), "prompt": req.prompt_ids, "max_tokens": req.max_tokens,
                "seed": req.seed, "logprobs": request_logprobs(req), "return_tokens_as_token_ids": True,
                "return_token_ids": True}
        r = self._post("/v1/completions", body)
        if r.status_code != 200:
            raise RuntimeError(f"vLLM server {self.base_url}/v1/completions answered {r.status_code}: {r.text:.500}")
        choice = r.json()["choices"][0]
        lp = choice.get("logprobs") or {}
        ids = choice.get("token_ids")
        if not req.logprobs:  # not asked for (rollout.vllm_logprobs < 1): the ids can only come as token_ids
            if ids is None:
                raise RuntimeError("vLLM server returned no token_ids (too old for return_token_ids?): use "
                                   "rollout.vllm_logprobs: true, whose log-probs also carry the ids")
            return TurnSample([int(t) for t in ids], [0.0] * len(ids), choice.get("finish_reason"))
        if ids is None:
            toks = lp.get("tokens") or []
            if not all(isinstance(t, str) and t.startswith("token_id:") for t in toks):
                raise RuntimeError("vLLM server ignored return_tokens_as_token_ids (too old?): cannot get token ids")
            ids = [int(t.removeprefix("token_id:")) for t in toks]
        lps = lp.get("token_logprobs")
        if lps is None or len(lps) != len(ids):
            raise RuntimeError(f"vLLM server returned {None if lps is None else len(lps)} log-probs for "
                               f"{len(ids)} tokens")
        return TurnSample([int(t) for t in ids], [float(x) for x in lps], choice.get("finish_reason"))

    def generate(self, reqs: list[TurnRequest], shared: dict[str, Any]) -> list[TurnSample]:
        """One completion per request, in request order."""
        if not reqs:
            return []
        self._model_name()
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(reqs))) as pool:
            return list(pool.map(lambda q: self._complete(q, shared), reqs))

    def reload_weights(self, path: str) -> None:
        """Reload the served model's weights from the checkpoint directory ``path`` (as seen by the server), then
        reset its prefix cache. Newest vLLM: worker ``reload_weights(weights_path=path)``; from 0.10.0:
        ``update_config({"model_config": {"model": path}})`` + ``reload_weights()``. Needs VLLM_SERVER_DEV_MODE=1;
        call it with no generation in flight."""
        path = str(path)
        r = self._post("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": path}})
        if r.status_code == 404:
            raise RuntimeError(f"vLLM server at {self.base_url} has no /collective_rpc: start it with "
                               "VLLM_SERVER_DEV_MODE=1, or restart it on the new checkpoint")
        if r.status_code != 200:  # older workers: reload_weights() takes no path
            log.info("reload_weights(weights_path) refused (%s); trying update_config + reload_weights", r.status_code)
            for body in ({"method": "update_config", "args": [{"model_config": {"model": path}}]},
                         {"method": "reload_weights"}):
                r = self._post("/collective_rpc", body)
                if r.status_code != 200:
                    raise RuntimeError(f"vLLM server could not reload weights from {path} "
                                       f"({body['method']}: {r.status_code} {r.text:.300})")
        r = self._post("/reset_prefix_cache")
        if r.status_code != 200:
            raise RuntimeError(f"vLLM server reloaded {path} but /reset_prefix_cache answered {r.status_code}")
