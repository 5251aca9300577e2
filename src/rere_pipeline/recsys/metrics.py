"""Top-K ranking metrics as the paper scores them: one relevant item per row, matched by title.

A row is a hit at 0-based rank r when ``ranked[r] == target``; NDCG@K = 1 / log2(r + 2) for
r < K (a single relevant item makes the ideal DCG 1). Matching by title means two catalogue
items with the same title (40 in the seed catalogue) both count as the target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

DEFAULT_KS = (1, 3, 5, 10, 20)


def hit_rank(ranked: Sequence[str], target: str) -> int | None:
    """0-based rank of the first occurrence of ``target`` in ``ranked``, or ``None``."""
    for rank, title in enumerate(ranked):
        if title == target:
            return rank
    return None


def ranking_metrics(
    ranked: Sequence[Sequence[str]], targets: Sequence[str], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Mean ``HR@K`` and ``NDCG@K`` over rows, for each K in ``ks``."""
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} ranked lists for {len(targets)} targets")
    if not targets:
        raise ValueError("no rows to score")
    ranks = [hit_rank(r, t) for r, t in zip(ranked, targets, strict=True)]
    out: dict[str, float] = {}
    for k in ks:
        hits = [r is not None and r < k for r in ranks]
        out[f"HR@{k}"] = sum(hits) / len(ranks)
        out[f"NDCG@{k}"] = sum(
            1.0 / math.log2(r + 2) for r, h in zip(ranks, hits, strict=True) if h
        ) / len(ranks)
    return out


def titles_by_first_occurrence(item_ids: Sequence[int], titles: dict[int, str]) -> list[str]:
    """Ranked item ids as ranked titles, keeping only the first occurrence of a repeated title.

    This is how an id-ranking model (SASRec) is scored on the same footing as the LM, which
    generates titles: two ids sharing a title occupy one rank, not two.
    """
    seen: set[str] = set()
    out = []
    for item_id in item_ids:
        title = titles[int(item_id)]
        if title not in seen:
            seen.add(title)
            out.append(title)
    return out
