"""The OFSD phase's re-sampling: K scored rollouts per drawn training question, grouped per question
(:func:`sample_groups`), with the ``min_pairs`` extension (:class:`searche1.ofsd.phase.OFSDConfig`)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from searche1.distributed import Dist
from searche1.errors import ConfigError
from searche1.ofsd.pairs import mine_pairs
from searche1.rollout.types import Episode, RolloutConfig

if TYPE_CHECKING:
    from searche1.ofsd.phase import OFSDConfig

log = logging.getLogger(__name__)

__all__ = ["EpisodeReward", "sample_groups"]

EpisodeReward = Callable[[Episode], tuple[float, dict]]


def sample_groups(model: Any, tokenizer: Any, retriever: Any, questions: Sequence[Any], cfg: OFSDConfig,
                  rollout_cfg: RolloutConfig, *, seed: int = 0,
                  episode_reward: EpisodeReward | None = None, dist: Dist | None = None,
                  engine: Any = None, progress: bool = False) -> tuple[list[list[Episode]], dict]:
    """K scored rollouts for each of ``cfg.questions`` seeded-sampled questions, grouped per question, sampled by
    ``engine`` (anything with the rollout engines' ``run``, e.g. the run's vLLM engine) or else an HF engine on
    ``model``.

    ``cfg.min_pairs`` > 0 (not in the paper, which re-samples every training question): while the groups so far
    give fewer pairs than that (:func:`~searche1.ofsd.pairs.mine_pairs` with ``cfg``'s rules), another batch of
    ``cfg.questions`` questions not yet drawn is sampled, up to ``cfg.max_questions`` questions in all (0 = 4 ×
    ``questions``) or the whole pool. The first batch is the one ``min_pairs: 0`` draws, so the extension only adds.
    The stats add ``ofsd/questions`` (questions sampled) and ``ofsd/batches``.

    With ``dist``, each rank samples its contiguous share of every batch and the scored groups are gathered, so
    every rank returns all groups (in question order), the same statistics and the same decision to extend.
    Episode generators are keyed by the global episode index, so the rollouts do not depend on the number of ranks.
    ``progress``: a bar of episodes (rank 0's share), since sampling is most of a phase's time on a CPU."""
    from tqdm.auto import tqdm

    from searche1.rewards import get_reward
    from searche1.rollout.hf_engine import HFEngine

    if not questions:
        raise ConfigError("OFSD phase: no training questions given")
    pool = list(questions)
    rng = random.Random(seed)
    # positions, not the questions: sample() only indexes its population, so this draws what sample(pool, k) would
    drawn = rng.sample(range(len(pool)), min(cfg.questions, len(pool)))
    cap = min(len(pool), cfg.max_questions or 4 * cfg.questions)
    K = cfg.samples_per_question
    d = dist or Dist()
    reward_fn = get_reward(cfg.reward)
    sampler = engine if engine is not None else HFEngine(model, tokenizer, retriever, rollout_cfg)
    was = model.training
    model.eval()
    bar = tqdm(total=0, desc="ofsd sampling", disable=not progress or not d.is_main, unit="ep")
    eps: list[Episode] = []
    batches = 0
    try:
        while True:
            batch = [pool[i] for i in drawn[len(eps) // K:]]
            lo, hi = d.rank * len(batch) // d.world, (d.rank + 1) * len(batch) // d.world
            bar.total += (hi - lo) * K
            bar.refresh()
            mine = sampler.run([q for q in batch[lo:hi] for _ in range(K)], seed=seed, first_index=len(eps) + lo * K,
                               progress=bar.update)
            for e in mine:
                r, m = episode_reward(e) if episode_reward is not None else reward_fn(e.answer, e.answers)
                e.reward = float(r)
                e.metrics.update(m)
            eps += [e for part in d.gather(mine) for e in part] if d.enabled else mine
            batches += 1
            if cfg.min_pairs <= 0 or len(drawn) >= cap:
                break
            groups = [eps[i * K:(i + 1) * K] for i in range(len(drawn))]
            found = len(mine_pairs(groups, student=cfg.student, reference=cfg.reference,  # type: ignore[arg-type]
                                   correct_threshold=cfg.correct_threshold)[0])
            if found >= cfg.min_pairs:
                break
            seen = set(drawn)
            rest = [i for i in range(len(pool)) if i not in seen]
            more = rng.sample(rest, min(cfg.questions, cap - len(drawn), len(rest)))
            if d.is_main:
                log.info("OFSD phase: %d pair(s) from %d questions, below min_pairs %d: sampling %d more questions",
                         found, len(drawn), cfg.min_pairs, len(more))
            bar.set_description(f"ofsd sampling ({found}/{cfg.min_pairs} pairs from {len(drawn)} questions, "
                                f"{len(more)} more)")
            drawn += more
    finally:
        bar.close()
        model.train(was)
    n = len(eps)
    stats = {
        "ofsd/reward": sum(e.reward for e in eps) / n,
        "ofsd/reward_em": sum(e.metrics.get("reward/em", e.reward) for e in eps) / n,
        "ofsd/reward_f1": sum(e.metrics.get("reward/f1", 0.0) for e in eps) / n,
        "ofsd/searches": sum(e.searches for e in eps) / n,
        "ofsd/policy_tokens": sum(e.num_policy_tokens for e in eps) / n,
        "ofsd/rollouts": float(n),
        "ofsd/questions": float(len(drawn)),
        "ofsd/batches": float(batches),
    }
    return [eps[i * K:(i + 1) * K] for i in range(len(drawn))], stats
