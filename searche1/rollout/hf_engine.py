"""Multi-turn search episodes decoded in batches with HF transformers and one KV cache per batch.

How it works (one batch of B episodes):

1. Prompts are prefilled once each (``rollout.shared_prefix``): a prompt repeated in the batch (a GRPO group) is
   computed once and its cache rows copied, and the prefix all prompts share (the agent's instructions: 132 of
   SmolLM2's ~142 prompt tokens) is computed in one row whose cache is repeated over the distinct prompts, with the
   rest of each prompt left-padded after it. The cache holds the keys and values of a full prefill, up to float
   rounding. The cache grows in place (:mod:`searche1.rollout.kv_cache`), not by one copy per token.
2. A *turn*: every live row samples token by token (our own sampling loop over the model's forward, not
   ``generate``) until its turn text contains ``</search>`` or ``</answer>``, it emits EOS, or the turn budget runs
   out. Rows that finished their turn early feed a pad token with attention-mask 0 so the cache stays aligned.
3. All pending searches of the turn go to the retriever in **one batched call**. Each retrieved block is tokenised
   once and appended as tokens (policy-mask 0) in one padded prefill; pads in the middle of a row are masked out
   and position ids skip them, so the model sees exactly the unpadded sequence.
4. Finished rows are dropped from the cache (``batch_select_indices``), and the next turn starts.

Nothing is ever decoded and re-tokenised to continue an episode (the Search-R1 pattern), so the token ids, the
policy mask and the sampler log-probs are exact. Log-probs are those of the temperature-scaled full distribution
(before top-p), computed in fp32 from the same logits the token was sampled from.

A retrieval failure ends only the episodes whose queries failed (``retrieval_error``); the batch goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from searche1 import protocol
from searche1.data.types import QAExample
from searche1.retrieval.base import Hit, Retriever
from searche1.rollout import tokens
from searche1.rollout.kv_cache import make_cache
from searche1.rollout.tokens import info_blocks, prompt_batch
from searche1.scoring import cache_kwarg, shared_prefix_len
from searche1.rollout.types import Episode, RolloutConfig, StopReason

log = logging.getLogger(__name__)

# (episode so far, this turn's sampled tokens) per cache row, and the raw logits (B, V) -> logits to sample from.
# Used for constrained decoding; recorded log-probs stay those of the unconstrained policy.
LogitsHook = Callable[[list[tuple[Episode, list[int]]], torch.Tensor], torch.Tensor]


def _safe_search(retriever: Retriever, queries: list[str], topk: int) -> list[list[Hit] | Exception]:
    """Batched search; if the batch fails, retry one by one so only the failing queries fail."""
    try:
        res = retriever.search(queries, topk)
        if len(res) != len(queries):
            raise RuntimeError(f"retriever returned {len(res)} results for {len(queries)} queries")
        return list(res)
    except Exception as batch_err:  # noqa: BLE001 - any retriever failure becomes a stop reason
        out: list[list[Hit] | Exception] = []
        for q in queries:
            try:
                out.append(retriever.search([q], topk)[0])
            except Exception as e:  # noqa: BLE001
                out.append(e)
        log.warning("batched retrieval failed (%s); retried %d queries one by one", batch_err, len(queries))
        return out


def episode_seed(seed: int, index: int) -> int:
    """The seed of episode ``index`` of a run seeded with ``seed`` (a 63-bit mix, distinct across steps)."""
    return (seed * 6364136223846793005 + (index + 1) * 1442695040888963407) % (1 << 63)


class HFEngine:
    """Rollout engine over an HF causal LM (CPU or GPU)."""

    def __init__(self, model, tokenizer, retriever: Retriever, cfg: RolloutConfig | None = None,
                 logits_hook: LogitsHook | None = None) -> None:
        self.model = model
        self.cfg = cfg or RolloutConfig()
        if logits_hook is None and self.cfg.turn_start == "constrained":
            from searche1.rollout.constraints import TurnStartConstraint

            logits_hook = TurnStartConstraint(tokenizer)
        self.logits_hook = logits_hook
        self.tok = tokenizer
        self.retriever = retriever
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        gen_eos = tokens.generation_eos_ids(getattr(model, "generation_config", None))
        self.eos_ids = {tokenizer.eos_token_id, *gen_eos} - {None}
        self._ends_with_stop = tokens.StopCheck(tokenizer)
        self._cache_kw = cache_kwarg(model)  # `cache` in transformers >= 5, earlier `past_key_values`

    # ------------------------------------------------------------------------------------------------------------
    def prompt_ids(self, question: str) -> list[int]:
        return tokens.prompt_ids(self.tok, question, self.cfg)

    def info_ids(self, hits: list[Hit]) -> list[int]:
        return tokens.info_ids(self.tok, hits, self.cfg)

    def run(
        self,
        examples: Sequence[QAExample],
        *,
        seed: int | None = None,
        first_index: int = 0,
        prompts: Sequence[list[int]] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[Episode]:
        """Run one episode per example (repeat an example G times for a GRPO group), in batches.

        With a ``seed``, episode ``i`` samples from its own generator seeded by ``(seed, first_index + i)``, so its
        tokens do not depend on its batch mates, the batch size or how episodes are split over data-parallel ranks
        (a rank passes the global index of its first episode as ``first_index``). ``prompts`` (token ids, one per
        example) replaces the agent prompt, e.g. for the non-agent baselines.
        """
        gens = None
        if seed is not None:
            gens = [torch.Generator().manual_seed(episode_seed(seed, first_index + i)) for i in range(len(examples))]
        episodes: list[Episode] = []
        bs = self.cfg.batch_size
        for i in range(0, len(examples), bs):
            episodes.extend(self._run_batch(examples[i : i + bs], None if gens is None else gens[i : i + bs],
                                            None if prompts is None else prompts[i : i + bs]))
            if progress:
                progress(min(bs, len(examples) - i))
        for ep in episodes:
            ep.response_text = self.tok.decode(ep.response_ids, skip_special_tokens=False)
            ep.answer = protocol.extract_answer(ep.response_text) if ep.stop_reason == StopReason.ANSWERED else None
        return episodes

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------------------------------------------------
    def _forward(self, input_ids, attn, cache, n_new: int) -> torch.Tensor:
        """Feed ``input_ids`` (B, n_new) given the full mask ``attn`` (B, L); the cache is updated in place.

        Returns the logits of the last position only (B, V): every chunk is left-padded so that each row's last
        real token sits at the end, and computing the LM head on one position instead of n_new is a large saving
        on CPU (vocabulary 49k).
        """
        pos = (attn.long().cumsum(-1) - 1).clamp(min=0)[:, -n_new:]  # (B, n_new)
        out = self.model(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=True,
                         logits_to_keep=1, **{self._cache_kw: cache})
        return out.logits[:, -1]  # (B, V)

    def _sample(self, raw: torch.Tensor, logits: torch.Tensor, gens, rows: list[int],
                live: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample from ``logits`` (B, V) (possibly constrained by a hook); log-probs come from ``raw``, the policy's
        own temperature-scaled distribution, which is what the trainer recomputes. With per-episode generators
        ``gens`` only the ``live`` rows draw (one uniform each, inverse-CDF), so a row that waits for a search does
        not consume its episode's random stream."""
        raw, logits = raw.float(), logits.float()
        if self.cfg.greedy:
            tokens = logits.argmax(-1)
            return tokens, torch.log_softmax(raw, -1).gather(-1, tokens[:, None])[:, 0]
        probs = torch.softmax(logits / self.cfg.temperature, -1)  # (B, V)
        if self.cfg.top_p < 1.0:
            sp, si = probs.sort(-1, descending=True)
            keep = (sp.cumsum(-1) - sp) < self.cfg.top_p
            probs = torch.zeros_like(probs).scatter(-1, si, sp * keep)
        if gens is None:
            tokens = torch.multinomial(probs, 1)[:, 0]
        else:
            u = torch.full((probs.shape[0], 1), 0.5)
            if live:  # one draw per live row from its own stream; written into u at once (not row by row)
                u[live, 0] = torch.stack([torch.rand((), generator=gens[rows[j]]) for j in live])
            cdf = probs.cumsum(-1)
            u = (u.clamp(min=1e-9).to(cdf.device) * cdf[:, -1:]).clamp(max=cdf[:, -1:] * (1 - 1e-7))
            tokens = torch.searchsorted(cdf, u)[:, 0].clamp(max=probs.shape[-1] - 1)
        return tokens, torch.log_softmax(raw / self.cfg.temperature, -1).gather(-1, tokens[:, None])[:, 0]

    def _end_turn(self, ep: Episode, turn_tokens: list[int], turn_lps: list[float], end: str) -> bool:
        """Record a finished turn on its episode and decide its fate; True when it asks for a search to run."""
        ep.turns += 1
        ep.append(turn_tokens, True, turn_lps)
        action = protocol.parse_turn(self.tok.decode(turn_tokens))
        if action.kind == "answer":
            ep.stop_reason = StopReason.ANSWERED
        elif action.kind == "search":
            if ep.searches >= self.cfg.max_searches:
                ep.stop_reason = StopReason.MAX_TURNS
            else:
                ep.queries.append(action.content)
                return True
        elif end in ("eos", "stop"):  # ended without a usable action (e.g. an empty query)
            ep.stop_reason = StopReason.PARSE_ERROR
        else:  # a length budget ran out mid-turn
            ep.stop_reason = StopReason.MAX_TOKENS
        return False

    @torch.no_grad()
    def _run_batch(self, examples: Sequence[QAExample], gens, prompts: Sequence[list[int]] | None) -> list[Episode]:
        cfg, dev = self.cfg, self._device
        if prompts is None:
            prompts = prompt_batch(self.tok, [e.question for e in examples], self.cfg)
        eps = [Episode(example_id=e.id, question=e.question, answers=list(e.answers), dataset=e.dataset,
                       prompt_ids=list(prompts[k])) for k, e in enumerate(examples)]
        # ---- prefill, with shared_prefix: each distinct prompt once (a GRPO group repeats one prompt G times), and
        # the prefix all distinct prompts share once (batch 1, then repeated over them), then the rest of each
        # left-padded after it: [prefix | pads | rest], pads masked, positions skip them; finally the rows of the
        # distinct prompts are copied out to their episodes. Without: every prompt in full, left-padded.
        cache = make_cache()
        if cfg.shared_prefix:
            index: dict[tuple[int, ...], int] = {}
            row_of = [index.setdefault(tuple(e.prompt_ids), len(index)) for e in eps]  # episode -> distinct prompt
            uniq = [list(p) for p in index]
        else:
            row_of, uniq = list(range(len(eps))), [e.prompt_ids for e in eps]
        C = shared_prefix_len(uniq) if cfg.shared_prefix else 0
        if C:
            one = torch.ones((1, C), dtype=torch.long, device=dev)
            self._forward(torch.tensor([uniq[0][:C]], device=dev), one, cache, C)
            cache.batch_repeat_interleave(len(uniq))
        P = max(map(len, uniq)) - C
        ids = torch.full((len(uniq), P), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(uniq), C + P), dtype=torch.long)
        attn[:, :C] = 1
        for r, p in enumerate(uniq):
            n = len(p) - C
            ids[r, P - n:] = torch.tensor(p[C:])
            attn[r, C + P - n:] = 1
        ids, attn = ids.to(dev), attn.to(dev)
        last = self._forward(ids, attn, cache, P)  # (distinct prompts, V)
        if len(uniq) < len(eps):
            idx = torch.tensor(row_of, device=dev)
            cache.batch_select_indices(idx)
            attn, last = attn[idx], last[idx]
        rows = list(range(len(eps)))  # cache row -> episode index
        total_len = [len(e.prompt_ids) for e in eps]

        while rows:
            # ---- one turn: sample until every live row has stopped. A row whose episode ends (answer, EOS,
            # budget) leaves the batch right away, so stragglers do not drag finished rows through the cache;
            # a row that asked for a search waits (feeding masked pads) for the turn's batched retrieval.
            turn_tokens: list[list[int]] = [[] for _ in rows]
            turn_lps: list[list[float]] = [[] for _ in rows]
            state: list[str | None] = [None] * len(rows)  # None generating | "search" | "done"
            unfed: set[int] = set()  # rows whose last sampled token is not in the cache yet
            for _step in range(cfg.max_turn_tokens):
                live = [j for j in range(len(rows)) if state[j] is None]
                proc = last
                if self.logits_hook is not None:
                    proc = self.logits_hook([(eps[r], turn_tokens[j]) for j, r in enumerate(rows)], last.clone())
                tokens, lps = self._sample(last, proc, gens, rows, live)
                # built as host lists and moved once: per-row writes into tensors cost ~8 us each on a CPU (one
                # launch each on a GPU), 8 ms a step at 512 rows
                feed_ids, feed_on = [self.pad_id] * len(rows), [0] * len(rows)
                tok_list, lp_list = tokens.tolist(), lps.tolist()
                for j in live:
                    t = tok_list[j]
                    turn_tokens[j].append(t)
                    turn_lps[j].append(lp_list[j])
                    total_len[rows[j]] += 1
                    feed_ids[j], feed_on[j] = t, 1
                    end = None
                    if t in self.eos_ids:
                        end = "eos"
                    elif self._ends_with_stop(turn_tokens[j]):
                        end = "stop"
                    elif total_len[rows[j]] >= cfg.max_total_tokens:
                        end = "budget"
                    if end is not None:
                        searching = self._end_turn(eps[rows[j]], turn_tokens[j], turn_lps[j], end)
                        state[j] = "search" if searching else "done"
                feed = torch.tensor(feed_ids, dtype=torch.long).view(-1, 1)
                feed_mask = torch.tensor(feed_on, dtype=torch.long).view(-1, 1)
                done = [j for j in range(len(rows)) if state[j] == "done"]
                if done and (len(done) >= max(1, len(rows) // 8) or all(x is not None for x in state)):
                    keep = [j for j in range(len(rows)) if state[j] != "done"]
                    if not keep:
                        rows = []
                        break
                    idx = torch.tensor(keep, device=dev)
                    cache.batch_select_indices(idx)
                    attn, feed, feed_mask = attn[idx], feed[keep], feed_mask[keep]
                    live = [keep.index(j) for j in live if j in keep]
                    rows, turn_tokens, turn_lps, state = ([xs[j] for j in keep]
                                                         for xs in (rows, turn_tokens, turn_lps, state))
                if all(x is not None for x in state):
                    unfed = set(live)  # fed together with the retrieved block below (saves one forward)
                    break
                attn = torch.cat([attn, feed_mask.to(dev)], dim=1)
                last = self._forward(feed.to(dev), attn, cache, 1)
            for j in range(len(rows)):  # the turn budget ran out mid-turn
                if state[j] is None:
                    state[j] = "search" if self._end_turn(eps[rows[j]], turn_tokens[j], turn_lps[j], "budget") \
                        else "done"
            pending = [j for j in range(len(rows)) if state[j] == "search"]
            # ---- one batched retrieval for the whole turn
            infos: dict[int, list[int]] = {}
            if pending:
                results = _safe_search(self.retriever, [eps[rows[j]].queries[-1] for j in pending], cfg.topk)
                for j, res, block in zip(pending, results, info_blocks(self.tok, results, cfg)):
                    ep = eps[rows[j]]
                    if isinstance(res, Exception):
                        ep.stop_reason = StopReason.RETRIEVAL_ERROR
                        ep.metrics["retrieval_error"] = str(res)
                        continue
                    if total_len[rows[j]] + len(block) + 1 >= cfg.max_total_tokens:
                        ep.stop_reason = StopReason.MAX_TOKENS
                        continue
                    infos[j] = block
            keep = [j for j in range(len(rows)) if j in infos]
            if not keep:
                break
            if len(keep) < len(rows):
                idx = torch.tensor(keep, device=dev)
                cache.batch_select_indices(idx)
                attn = attn[idx]
                rows = [rows[j] for j in keep]
            # ---- append the retrieved blocks (left-padded within this chunk, pads masked out); a row's last
            # sampled token rides along in front of its block when it has not been fed yet
            feeds = {j: ([turn_tokens[j][-1]] if j in unfed else []) + infos[j] for j in keep}
            L = max(len(f) for f in feeds.values())
            block_ids = torch.full((len(keep), L), self.pad_id, dtype=torch.long)
            block_mask = torch.zeros((len(keep), L), dtype=torch.long)
            for k, j in enumerate(keep):
                f = feeds[j]
                block_ids[k, L - len(f):] = torch.tensor(f)
                block_mask[k, L - len(f):] = 1
                eps[rows[k]].append(infos[j], False)
                total_len[rows[k]] += len(infos[j])
            attn = torch.cat([attn, block_mask.to(dev)], dim=1)
            last = self._forward(block_ids.to(dev), attn, cache, L)  # (B', V)
        return eps
