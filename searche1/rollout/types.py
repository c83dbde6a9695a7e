"""Rollout records and limits: what one search-agent episode produced, token by token.

Token ids are the source of truth (DESIGN §3). ``response_ids`` holds everything after the prompt in order: tokens
the policy sampled (``policy_mask`` 1, with the sampler's log-prob) and tokens the environment inserted, i.e.
retrieved ``<information>`` blocks (``policy_mask`` 0, log-prob 0). Masks are never rebuilt from decoded text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from searche1.config import ConfigError


class StopReason(str, Enum):
    ANSWERED = "answered"  # a complete <answer> … </answer>
    MAX_TURNS = "max_turns"  # asked for a search after the search budget was spent
    MAX_TOKENS = "max_tokens"  # turn budget or total length budget exhausted
    PARSE_ERROR = "parse_error"  # EOS without a complete <search> or <answer>
    RETRIEVAL_ERROR = "retrieval_error"  # the retriever failed for this episode's query


def server_urls(vllm_url: str | None) -> list[str]:
    """``rollout.vllm_url`` as a list: one URL, or several separated by commas."""
    return [u.strip() for u in (vllm_url or "").split(",") if u.strip()]


@dataclass
class RolloutConfig:
    max_searches: int = field(default=4, metadata={"help": "searches per episode; one more ends it (max_turns)"})
    max_turn_tokens: int = field(default=192, metadata={"help": "new tokens the policy may write per turn"})
    max_doc_tokens: int = field(default=96, metadata={"help": "tokens kept of each retrieved passage"})
    max_info_tokens: int = field(default=400, metadata={"help": "hard cap on one <information> block"})
    max_total_tokens: int = field(default=2048, metadata={"help": "prompt + response length cap"})
    topk: int = field(default=3, metadata={"help": "passages per search"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (ignored when greedy)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling; log-probs stay those of the full "
                                                        "temperature-scaled distribution"})
    greedy: bool = field(default=False, metadata={"help": "argmax decoding (evaluation)"})
    batch_size: int = field(default=32, metadata={"help": "episodes decoded together"})
    shared_prefix: bool = field(default=True, metadata={
        "help": "hf engine: prefill each distinct prompt once (not once per rollout of a group) and the prompts' "
                "common prefix (the instructions) once per batch; false = every prompt prefilled in full"})
    chat: bool | None = field(default=None, metadata={"help": "use the chat template (None = if the tokenizer has one)"})
    engine: Literal["hf", "vllm", "vllm-server"] = field(default="hf", metadata={
        "help": "hf: batched HF generate loop in the trainer's process; vllm: a colocated vLLM engine (GPU) whose "
                "weights are pushed after each optimizer step; vllm-server: a `vllm serve` at vllm_url, reloaded by "
                "path after each step"})
    sampler_dtype: Literal["auto", "same", "bfloat16", "float16", "float32"] = field(default="auto", metadata={
        "help": "hf engine: sample from a copy of the policy in this dtype, synced after every optimizer step; auto "
                "= bfloat16 where it is native (GPU, or a CPU with AVX512-BF16/AMX) and the trainer is not already "
                "bf16, else no copy (same)"})
    vllm_url: str | None = field(default=None, metadata={
        "help": "vllm-server: base URL, e.g. http://127.0.0.1:8001, or several separated by commas: the ranks are "
                "split into contiguous blocks, one per server (one server per node: each node's ranks use its own), "
                "and the first rank of each block pushes the weights to its server after each step"})
    vllm_server_concurrency: int = field(default=256, metadata={
        "help": "vllm-server: requests in flight at once, one per episode's turn (the server batches what is in "
                "flight: below the episodes of a turn it decodes in smaller batches)"})
    vllm_gpu_memory_utilization: float = field(default=0.35, metadata={
        "help": "vllm: fraction of GPU memory for the colocated engine (the rest is the trainer's)"})
    vllm_multiprocessing: bool = field(default=False, metadata={
        "help": "vllm: run vLLM's engine in its own process, so its output processing (detokenising, log-prob "
                "objects) overlaps the GPU's work; weights are then pushed by RPC, a copy each step (sets "
                "VLLM_ALLOW_INSECURE_SERIALIZATION=1). Default in-process: weights pushed by reference. Not yet "
                "measured on a GPU"})
    vllm_logprobs: bool | float | None = field(default=None, metadata={
        "help": "vllm engines: the fraction of episodes for which vLLM returns the sampled tokens' log-probs (true = "
                "1, false = 0), spread evenly over episode indices; they serve only to log rollout/logprob_mismatch "
                "when the trainer re-scores the samples (and grpo.tis_cap's weights, which need all). Each such token costs vLLM's front end ~8x the CPU of one "
                "without (vLLM 0.20: 52 vs 6 us on this 2-core CPU, benchmarks/vllm_output_cost.py), in the "
                "trainer's thread when in-process. None = 1/8 when recompute_logprobs is on (the vLLM default), "
                "all when it is off (then they are the PPO old log-probs, and anything below 1 is an error) or when "
                "grpo.tis_cap is set"})
    vllm_request_seeds: bool = field(default=True, metadata={
        "help": "vllm engines: one seed per request (episode and turn), so an episode's tokens do not depend on its "
                "batch mates, vLLM's scheduling, the rank split or a resume; false: vLLM's own generator (seeded "
                "with the run's seed and rank when GRPO builds the engine), which "
                "skips a per-request loop in its sampler (vLLM 0.20 draws each seeded request's noise with its own "
                "kernel launch, every decode step) but reproduces a rollout only with identical batches. Speed-up "
                "not yet measured on a GPU"})
    vllm_stream_turns: bool = field(default=False, metadata={
        "help": "vllm (colocated): submit each request on its own and take it back when it finishes, so an episode's "
                "next turn starts as soon as its search returns while the others keep decoding (no wait for a "
                "turn's slowest episode); false: each turn is one llm.generate call for every live episode. The "
                "same episodes either way (tested); the speed-up is not yet measured on a GPU"})
    vllm_kwargs: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "vllm: extra keywords for vllm.LLM, e.g. {enforce_eager: true} (no torch.compile / CUDA graphs: "
                "faster start, slower decode) or {attention_config: {backend: TRITON_ATTN}}"})
    recompute_logprobs: bool | None = field(default=None, metadata={
        "help": "take the PPO 'old' log-probs from the trainer's model, not the sampler's, and log "
                "rollout/logprob_mismatch; with grpo.ppo_epochs 1 they come from the loss forward itself, with more "
                "from a no-grad pass before the update. None = on when the sampler is not the trainer's model "
                "(vLLM engines, a bf16 sampling copy), off otherwise"})
    turn_start: Literal["free", "constrained"] = field(default="free", metadata={
        "help": "constrained: a turn may only open with <search>, <answer> or <think> (sampling only; log-probs stay "
                "the policy's)"})

    def validate(self) -> None:
        if self.max_searches < 0:
            raise ConfigError("max_searches: must be >= 0")
        if self.temperature <= 0 and not self.greedy:
            raise ConfigError("temperature: must be > 0 (fix: set greedy: true for argmax decoding)")
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p: must be in (0, 1]")
        if self.engine == "vllm-server" and not server_urls(self.vllm_url):
            raise ConfigError("vllm_url: engine vllm-server needs the server's URL (fix: vllm_url: http://HOST:PORT)")
        if not isinstance(self.vllm_logprobs, bool) and self.vllm_logprobs is not None \
                and not 0 <= self.vllm_logprobs <= 1:
            raise ConfigError(f"vllm_logprobs: {self.vllm_logprobs} is not a fraction of episodes (fix: a number in "
                              "[0, 1], true or false)")
        if self.engine != "hf" and self.vllm_logprob_fraction() < 1 and self.recompute_logprobs is False:
            raise ConfigError(f"vllm_logprobs: {self.vllm_logprobs} leaves episodes without old log-probs unless the "
                              "trainer re-scores the samples (fix: recompute_logprobs: true, or leave it unset, or "
                              "vllm_logprobs: true)")
        if self.vllm_stream_turns and self.engine != "vllm":
            raise ConfigError(f"vllm_stream_turns: only the colocated engine streams turns, not engine '{self.engine}' "
                              "(fix: engine: vllm, or vllm_stream_turns: false)")
        if self.engine not in ("hf", "vllm", "vllm-server"):
            raise ConfigError(f"engine: unknown '{self.engine}' (fix: use one of: hf, vllm, vllm-server)")
        for name in ("max_turn_tokens", "max_total_tokens", "max_doc_tokens", "max_info_tokens", "batch_size", "topk",
                     "vllm_server_concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1")

    def vllm_logprob_fraction(self) -> float:
        """The share of episodes a vLLM engine asks for sampler log-probs (``vllm_logprobs`` resolved)."""
        if self.vllm_logprobs is None:
            return 1.0 if self.recompute_logprobs is False else DEFAULT_VLLM_LOGPROB_FRACTION
        return float(self.vllm_logprobs)


DEFAULT_VLLM_LOGPROB_FRACTION = 0.125
"""``rollout.vllm_logprobs`` when the trainer re-scores: enough episodes (1 in 8) to estimate the mismatch."""


def logprobs_wanted(index: int, fraction: float) -> bool:
    """Whether global episode ``index`` is one of the ``fraction`` whose sampler log-probs are asked for: exactly
    ``floor(n * fraction)`` of any first ``n`` indices, evenly spread, the same on every rank split."""
    return int((index + 1) * fraction + 1e-9) > int(index * fraction + 1e-9)  # 1e-9: 90 * 0.7 is 62.99999...


@dataclass
class Episode:
    """One finished episode."""

    example_id: str
    question: str
    answers: list[str]
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    policy_mask: list[int] = field(default_factory=list)  # per response token: 1 sampled by the policy, 0 inserted
    logprobs: list[float] = field(default_factory=list)  # per response token: sampler log-prob (0.0 where mask 0)
    sampler_logprobs: bool = True  # False: the sampler returned none (vLLM, rollout.vllm_logprobs), logprobs are 0
    turns: int = 0
    queries: list[str] = field(default_factory=list)
    answer: str | None = None
    stop_reason: StopReason | None = None
    response_text: str = ""
    reward: float = 0.0
    metrics: dict = field(default_factory=dict)
    dataset: str = ""

    @property
    def searches(self) -> int:
        return len(self.queries)

    @property
    def num_policy_tokens(self) -> int:
        return sum(self.policy_mask)

    def append(self, ids: list[int], policy: bool, logprobs: list[float] | None = None) -> None:
        self.response_ids.extend(ids)
        self.policy_mask.extend([1 if policy else 0] * len(ids))
        self.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))
