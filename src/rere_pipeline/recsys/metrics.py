"""Top-K ranking metrics as the paper scores them: one relevant item per row, matched by title.

A row is a hit at 0-based rank r when ``ranked[r] == target``; NDCG@K = 1 / log2(r + 2) for
r < K (a single relevant item makes the ideal DCG 1). Matching by title means catalogue items
with the same title all count as the target (in the seed catalogue 55 items share 15 titles,
27 of them one placeholder; ``data_summary.json``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_KS = (1, 3, 5, 10, 20)
VALID_K = 10  # the K of the valid NDCG training chooses on (ReRe's keep_best, tuning)


def check_depth(k: int, beam_width: int, setting: str) -> None:
    """Refuse scoring @``k`` a ranking a beam search of ``beam_width`` made: it holds only
    ``beam_width`` items, so HR@k and NDCG@k would silently equal the figures @beam_width."""
    if int(k) > int(beam_width):
        raise ValueError(
            f"{setting}: K = {k} is above the beam width {beam_width}; a beam search of width "
            f"{beam_width} ranks only {beam_width} items, so HR@{k} and NDCG@{k} would equal "
            f"the @{beam_width} figures. Raise the beam width to at least {k} or drop that K."
        )


def check_evaluate_depth(evaluate: dict) -> None:
    """``evaluate.ks`` against ``evaluate.beam_width``."""
    check_depth(max(int(k) for k in evaluate["ks"]), evaluate["beam_width"], "evaluate.ks")


def check_valid_depth(beam_width: int) -> None:
    """ReRe's valid NDCG@10 (``VALID_K``) against ``rere.eval_beam_width``."""
    check_depth(VALID_K, beam_width, "rere.eval_beam_width (valid NDCG@10)")


def check_ranking_depth(params: dict) -> None:
    """The project's parameters, as far as they are set: ``check_evaluate_depth``,
    ``check_valid_depth`` and ``check_reported_ks``."""
    evaluate, rere = params.get("evaluate") or {}, params.get("rere") or {}
    if evaluate.get("ks") and evaluate.get("beam_width"):
        check_evaluate_depth(evaluate)
    if rere.get("eval_beam_width"):
        check_valid_depth(rere["eval_beam_width"])
    check_reported_ks(params)


def check_reported_ks(params: dict) -> None:
    """Every K the reports and the registry read is one every model is scored at: the
    registry's valid NDCG@10 (``VALID_K``) in ``evaluate.ks``, each K of ``evaluate.ks`` in
    SASRec's ``baselines.sasrec.eval.ks`` (the report shows every model at each), and the paired
    comparison's ``evaluate.compare.k`` within the beam width and SASRec's ``predictions_k``
    (the titles kept per row)."""
    evaluate = params.get("evaluate") or {}
    ks = sorted({int(k) for k in evaluate.get("ks") or ()})
    if not ks:
        return
    if VALID_K not in ks:
        raise ValueError(
            f"evaluate.ks {ks} lacks {VALID_K}: the registry and promotion compare models on "
            f"valid NDCG@{VALID_K}"
        )
    sasrec = ((params.get("baselines") or {}).get("sasrec") or {}).get("eval") or {}
    missing = sorted(set(ks) - {int(k) for k in sasrec.get("ks", DEFAULT_KS)})  # as it scores
    if missing:
        raise ValueError(
            f"baselines.sasrec.eval.ks lacks {missing} of evaluate.ks {ks}: the evaluation "
            "report shows every model at each K of evaluate.ks"
        )
    k = int((evaluate.get("compare") or {}).get("k", VALID_K))
    if evaluate.get("beam_width"):
        check_depth(k, evaluate["beam_width"], "evaluate.compare.k")
    kept = sasrec.get("predictions_k")
    if kept is not None and k > int(kept):
        raise ValueError(
            f"evaluate.compare.k: K = {k} is above baselines.sasrec.eval.predictions_k = {kept}, "
            f"the titles SASRec's predictions keep per row, so its NDCG@{k} would be its "
            f"NDCG@{kept}. Raise predictions_k to at least {k} or lower compare.k."
        )


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
    ranks = _hit_ranks(ranked, targets)
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = sum(r is not None and r < k for r in ranks) / len(ranks)
        out[f"NDCG@{k}"] = sum(_row_ndcg(ranks, k)) / len(ranks)
    return out


def ndcg_per_row(ranked: Sequence[Sequence[str]], targets: Sequence[str], k: int) -> np.ndarray:
    """NDCG@k of each row (0.0 for a miss): the values ``ranking_metrics`` averages."""
    return np.array(_row_ndcg(_hit_ranks(ranked, targets), k))


def _hit_ranks(ranked: Sequence[Sequence[str]], targets: Sequence[str]) -> list[int | None]:
    return [hit_rank(r, t) for r, t in zip(ranked, targets, strict=True)]


def _row_ndcg(ranks: Sequence[int | None], k: int) -> list[float]:
    return [1.0 / math.log2(r + 2) if r is not None and r < k else 0.0 for r in ranks]


def paired_bootstrap_ratio(
    numerator: np.ndarray,
    denominator: np.ndarray,
    *,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """``mean(numerator) / mean(denominator)`` over the same rows, with a percentile bootstrap
    interval: each resample draws rows with replacement and takes *both* means over the same
    draw (paired), so the interval reflects how the two models differ row by row, not the
    spread of either alone. ``above_1`` is the share of resamples with a ratio above 1 (one
    whose denominator scored 0 counts as infinite when the numerator did not, and is dropped
    from the interval and the share when neither did)."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    if numerator.shape != denominator.shape or numerator.ndim != 1 or not len(numerator):
        raise ValueError(
            f"paired bootstrap: need two equal, non-empty 1-D arrays, got "
            f"{numerator.shape} and {denominator.shape}"
        )
    rng = np.random.default_rng(seed)
    ratios = np.empty(samples)
    for chunk in range(0, samples, 100):  # 100 resamples at a time: bounded memory
        draw = rng.integers(0, len(numerator), size=(min(100, samples - chunk), len(numerator)))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios[chunk : chunk + len(draw)] = numerator[draw].mean(1) / denominator[draw].mean(1)
    tail = (1.0 - confidence) / 2 * 100
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = numerator.mean() / denominator.mean()
    return {
        "ratio": float(ratio),
        # resampled ratios themselves, not interpolations: a resample whose denominator
        # scored 0 gives an infinite ratio, and inf - inf would interpolate to NaN
        "low": float(np.nanpercentile(ratios, tail, method="lower")),
        "high": float(np.nanpercentile(ratios, 100 - tail, method="higher")),
        "above_1": float(np.mean(ratios[~np.isnan(ratios)] > 1.0)),
    }


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
