"""Nodes of the ``evaluate`` pipeline: score models on the official splits, report side by side."""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from rere_pipeline.mlops.registry import rows_fingerprint
from rere_pipeline.pipelines.samples import scored_rows
from rere_pipeline.recsys.backbone import Backbone, weights_digest
from rere_pipeline.recsys.decoding import DecodeTimings
from rere_pipeline.recsys.metrics import (
    check_evaluate_depth,
    ndcg_per_row,
    paired_bootstrap_ratio,
    ranking_metrics,
)
from rere_pipeline.recsys.prompts import PromptTemplate
from rere_pipeline.recsys.recommend import CatalogueRecommender

log = logging.getLogger(__name__)


def evaluate_lm(
    model_name: str,
    backbone: Backbone,
    catalogue: pd.DataFrame,
    params: dict,
    prompt_params: dict,
    **splits: pd.DataFrame,
) -> tuple[dict, pd.DataFrame]:
    """HR@K / NDCG@K of an LM's constrained beam search on each split, and its predictions."""
    check_evaluate_depth(params)
    ks = [int(k) for k in params["ks"]]
    length_penalty = float(params.get("length_penalty", 0.0))
    recommender = CatalogueRecommender(
        backbone.tokenizer,
        backbone.model,
        catalogue,
        PromptTemplate.from_params(prompt_params),
        num_beams=int(params["beam_width"]),
        batch_size=int(params["batch_size"]),
        length_penalty=length_penalty,
    )
    known = set(catalogue["title"].astype(str))
    digest = weights_digest(backbone.model)  # registering checks it scored these weights
    report, predictions = {}, []
    for split, prompts in splits.items():
        prompts = scored_rows(prompts, params.get("max_rows"), split)
        timings = DecodeTimings()
        start = time.perf_counter()
        recs = recommender.to_recommendations(
            recommender.decode(
                [list(p) for p in prompts["prompt_ids"]], timings=timings, progress=True
            )
        )
        seconds = time.perf_counter() - start
        returned = [t for r in recs for t in r.titles]
        report[split] = {
            "split": split,
            "rows": len(prompts),
            "valid_fraction": sum(t in known for t in returned) / max(1, len(returned)),
            "beam_width": int(params["beam_width"]),
            "rows_fingerprint": rows_fingerprint(
                prompts, known, int(params["beam_width"]), length_penalty
            ),
            "weights_sha256": digest,
            **ranking_metrics([r.titles for r in recs], prompts["item_title"].tolist(), ks),
            "users_per_second": len(prompts) / seconds,
        }
        log.info(
            "%s on %s: %s",
            model_name,
            split,
            {k: round(v, 4) for k, v in report[split].items() if "@" in k},
        )
        predictions.append(
            pd.DataFrame(
                {
                    "model": model_name,
                    "split": split,
                    "row": prompts.index.values,  # position in the split (scored_rows)
                    "user_id": prompts["user_id"].values,
                    "target_item_id": prompts["item_id"].values,
                    "target_title": prompts["item_title"].values,
                    "titles": [r.titles for r in recs],
                    "item_ids": [[ids[0] for ids in r.item_ids] for r in recs],
                    "scores": [r.scores for r in recs],
                }
            )
        )
    return {model_name: report}, pd.concat(predictions, ignore_index=True)


def _evaluate_named(model_name: str):
    def evaluate(
        model: Backbone,
        catalogue: pd.DataFrame,
        prompts_valid: pd.DataFrame,
        prompts_test: pd.DataFrame,
        params: dict,
        prompt_params: dict,
    ):
        return evaluate_lm(
            model_name,
            model,
            catalogue,
            params,
            prompt_params,
            valid=prompts_valid,
            test=prompts_test,
        )

    evaluate.__name__ = evaluate.__qualname__ = f"evaluate_{model_name}"
    return evaluate


evaluate_sft = _evaluate_named("sft")
evaluate_rere = _evaluate_named("rere")


def combine_reports(*reports: dict) -> dict:
    combined: dict = {}
    for report in reports:
        combined.update(report)
    return combined


# Where each kind of predictions keeps what the comparison reads (ours -> theirs).
_LM_COLUMNS = {
    "row": "row",
    "user_id": "user_id",
    "item_id": "target_item_id",
    "target_title": "target_title",
    "titles": "titles",
}
_SASREC_COLUMNS = {
    **_LM_COLUMNS,
    "item_id": "item_id",
    "target_title": "item_title",
    "titles": "ranked_titles",
}


def _rows_scored(
    name: str, predictions: pd.DataFrame, split: str, rows: pd.DataFrame
) -> pd.DataFrame | None:
    """``predictions``' rows of ``split``, indexed by position in ``rows`` (that split's model
    input), with ``target_title`` and ``titles``; ``None`` when the model did not score the
    split. Predictions hold every split their model scored (``split`` column); SASRec's
    written before they had one hold the test split only."""
    if "row" not in predictions:
        raise ValueError(
            f"{name}_predictions has no 'row' column (written before it existed): "
            "re-run the node that wrote it"
        )
    if "split" in predictions:
        picked = predictions[predictions["split"] == split]
    elif split == "test":  # SASRec's, written before they held valid rows
        picked = predictions
    else:
        return None
    if picked.empty:
        return None
    columns = _SASREC_COLUMNS if "ranked_titles" in picked else _LM_COLUMNS
    frame = pd.DataFrame({ours: picked[theirs].to_numpy() for ours, theirs in columns.items()})
    position = frame["row"].to_numpy()
    aligned = frame["row"].between(0, len(rows) - 1).all() and (
        (rows["user_id"].to_numpy()[position] == frame["user_id"].to_numpy()).all()
        and (rows["item_id"].to_numpy()[position] == frame["item_id"].to_numpy()).all()
    )
    if not aligned:
        raise ValueError(
            f"{name}_predictions: its {split} rows do not match "
            f"data/05_model_input/{split}.parquet (user_id / item_id differ); re-run the stage "
            "that wrote them"
        )
    return frame.set_index("row")


def compare_models(
    test: pd.DataFrame,
    valid: pd.DataFrame,
    train: pd.DataFrame,
    params: dict,
    **predictions: pd.DataFrame,
) -> dict:
    """Paired comparison of the models, per split, on the rows they all scored (NDCG@``k``).

    * ``pairs``: each ``[a, b]`` of ``compare.pairs`` as mean(a) / mean(b) with a paired
      bootstrap interval (``paired_bootstrap_ratio``): is a gain larger than row noise?
    * ``slices``: the same metric on the rows whose history already holds the target title
      (the user buys it again: 5% of test, but a large share of every model's hits) and on
      the rest, so a gain or loss can be traced to one kind of row.
    * ``popularity``: the new-item rows again, split by how many ``train`` rows have their
      target title as the target (``compare.popularity_bins``): a target never trained on
      cannot be learnt, and a gain on rare targets can hide a loss on popular ones.
    """
    settings = params.get("compare", {})
    train_counts = train["item_title"].value_counts()
    result = {}
    for split, rows in (("test", test), ("valid", valid)):
        scored = {
            name: frame
            for name, p in predictions.items()
            if (frame := _rows_scored(name, p, split, rows)) is not None
        }
        if scored:
            result[split] = _compare_split(split, rows, scored, settings, train_counts)
    return result


def popularity_labels(bins: list[int]) -> list[str]:
    """Labels of the buckets ``bins`` (increasing upper bounds) cut counts into: ``[0, 2, 5]``
    gives ``0``, ``1-2``, ``3-5`` and ``>5``."""
    if not bins or any(b < 0 for b in bins) or sorted(set(bins)) != list(bins):
        raise ValueError(
            f"evaluate.compare.popularity_bins must be increasing counts >= 0, got {bins}"
        )
    labels, low = [], 0
    for high in bins:
        labels.append(str(high) if low == high else f"{low}-{high}")
        low = high + 1
    return [*labels, f">{bins[-1]}"]


def _slice(mask: np.ndarray, ndcg: dict[str, np.ndarray]) -> dict:
    """Rows, mean metric and share of each model's total on the rows of ``mask``."""
    return {
        "rows": int(mask.sum()),
        **{
            name: float(values[mask].mean()) if mask.any() else None
            for name, values in ndcg.items()
        },
        "share_of_hits": {
            name: float(values[mask].sum() / values.sum()) if values.any() else None
            for name, values in ndcg.items()
        },
    }


def _compare_split(
    split: str, rows: pd.DataFrame, scored: dict, settings: dict, train_counts: pd.Series
) -> dict:
    k = int(settings.get("k", 10))
    common = sorted(set.intersection(*(set(frame.index) for frame in scored.values())))
    if not common:
        raise ValueError(f"compare_models: {', '.join(scored)} scored no {split} row in common")
    ndcg = {
        name: ndcg_per_row(
            frame.loc[common, "titles"].map(list).tolist(),
            frame.loc[common, "target_title"].tolist(),
            k,
        )
        for name, frame in scored.items()
    }
    history = rows["history_item_title"].to_numpy()[common]
    target = rows["item_title"].to_numpy()[common]
    repeat = np.array([t in set(h) for t, h in zip(target, history, strict=True)], dtype=bool)
    samples, seed = int(settings.get("bootstrap_samples", 1000)), int(settings.get("seed", 0))
    confidence = float(settings.get("confidence", 0.95))
    pairs = {}
    for a, b in settings.get("pairs", [["rere", "sft"], ["rere", "sasrec"], ["sft", "sasrec"]]):
        if a not in ndcg or b not in ndcg:
            continue  # e.g. SASRec on valid
        if not ndcg[b].any():
            pairs[f"{a}/{b}"] = {"ratio": None, "note": f"{b} has no hit in the top {k}"}
            continue
        pairs[f"{a}/{b}"] = paired_bootstrap_ratio(
            ndcg[a], ndcg[b], samples=samples, confidence=confidence, seed=seed
        )
    slices = {
        label: _slice(mask, ndcg)
        for label, mask in (("history holds the target", repeat), ("new item", ~repeat))
    }
    bins = [int(b) for b in settings.get("popularity_bins", [0, 2, 5, 10, 20])]
    bucket = np.searchsorted(bins, train_counts.reindex(target).fillna(0).to_numpy())
    popularity = {
        label: _slice(~repeat & (bucket == i), ndcg)
        for i, label in enumerate(popularity_labels(bins))
    }
    log.info(
        "%s NDCG@%d, paired bootstrap (ratio, low, high): %s",
        split,
        k,
        {
            pair: (round(v["ratio"], 3), round(v["low"], 3), round(v["high"], 3))
            for pair, v in pairs.items()
            if v["ratio"] is not None
        },
    )
    return {
        "split": split,
        "metric": f"NDCG@{k}",
        "rows": len(common),
        "bootstrap_samples": samples,
        "confidence": confidence,
        "models": {name: float(values.mean()) for name, values in ndcg.items()},
        "pairs": pairs,
        "slices": slices,
        "popularity": popularity,
    }


def markdown_table(evaluation: dict, params: dict, comparison: dict | None = None) -> str:
    """One table per split: models as rows, HR@K and NDCG@K as columns; then the paired
    comparison of each split (``compare_models``) when given."""
    ks = [int(k) for k in params["ks"]]
    metrics = [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks]
    lines = ["# Evaluation", ""]
    for split in ("test", "valid"):
        models = [m for m, r in evaluation.items() if split in r]
        if not models:
            continue
        lines += [
            f"## {split}",
            "",
            "| model | rows | " + " | ".join(metrics) + " |",
            "|---" * (len(metrics) + 2) + "|",
        ]
        for m in models:
            entry = evaluation[m][split]
            lines.append(
                f"| {m} | {entry['rows']} | "
                + " | ".join(f"{entry[h]:.4f}" for h in metrics)
                + " |"
            )
        lines.append("")
    for split in ("test", "valid"):
        if split in (comparison or {}):
            lines += comparison_lines(comparison[split])
    lines.append(
        "Hits are matched by title (duplicate titles count, as in the paper); "
        "`sasrec_by_id` is SASRec matched by item id."
    )
    return "\n".join(lines) + "\n"


def comparison_lines(comparison: dict) -> list[str]:
    """Markdown of one split's comparison (``compare_models``): ratios with intervals, then
    the slices."""
    metric, models = comparison["metric"], list(comparison["models"])
    lines = [
        f"## {comparison['split']}: paired comparison ({metric})",
        "",
        f"Ratio of mean {metric} over the {comparison['rows']} {comparison['split']} rows "
        f"scored by each of {', '.join(models)}, "
        f"with a {comparison['confidence']:.0%} paired bootstrap interval "
        f"({comparison['bootstrap_samples']} resamples of the rows).",
        "",
        "| models | ratio | interval | resamples above 1 |",
        "|---|---|---|---|",
    ]
    for pair, entry in comparison["pairs"].items():
        if entry["ratio"] is None:
            lines.append(f"| {pair.replace('/', ' / ')} | - | {entry['note']} | - |")
            continue
        lines.append(
            f"| {pair.replace('/', ' / ')} | {entry['ratio']:.3f} | "
            f"{entry['low']:.3f} - {entry['high']:.3f} | {entry['above_1']:.0%} |"
        )
    lines += [
        "",
        f"{metric} by kind of row (in brackets: that kind's share of the model's total):",
        "",
        *slice_table("rows", comparison["slices"], models),
    ]
    if "popularity" in comparison:  # comparisons written before it existed have none
        lines += [
            "",
            f"{metric} of the new-item rows by how many train rows have their target as the "
            "target (in brackets: the share of the model's total):",
            "",
            *slice_table("target's train rows", comparison["popularity"], models),
        ]
    return [*lines, ""]


def slice_table(header: str, slices: dict, models: list[str]) -> list[str]:
    """Markdown rows of ``compare_models``' slices: rows, then each model's metric (share)."""
    lines = [
        f"| {header} | n | " + " | ".join(models) + " |",
        "|---" * (len(models) + 2) + "|",
    ]
    for label, entry in slices.items():
        cells = [
            "-"
            if entry[m] is None
            else f"{entry[m]:.4f}"
            + ("" if entry["share_of_hits"][m] is None else f" ({entry['share_of_hits'][m]:.0%})")
            for m in models
        ]
        lines.append(f"| {label} | {entry['rows']} | " + " | ".join(cells) + " |")
    return lines


def curves_figure(evaluation: dict, params: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [int(k) for k in params["ks"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("HR", "NDCG"), strict=True):
        for model, report in evaluation.items():
            if "test" in report:
                ax.plot(ks, [report["test"][f"{metric}@{k}"] for k in ks], marker="o", label=model)
        ax.set_xlabel("K")
        ax.set_ylabel(f"{metric}@K (test)")
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Top-K metrics on the official test split")
    fig.tight_layout()
    return fig


def mlflow_metrics(evaluation: dict, comparison: dict | None = None) -> dict:
    """``{model}.{split}.HR_at_10`` ... (MLflow metric names cannot hold '@'), and each
    compared pair's ratio and interval as ``compare.test.rere_vs_sft.ratio`` / ``.low`` /
    ``.high``.

    Only the models this pipeline scores: the baselines pipeline logs its own, same names.
    """
    metrics = {
        f"{model}.{split}.{name.replace('@', '_at_')}": {"value": float(value), "step": 0}
        for model, report in evaluation.items()
        for split, entry in report.items()
        for name, value in entry.items()
        if "@" in name or name in ("valid_fraction", "users_per_second")
    }
    for split, entry in (comparison or {}).items():
        for pair, ratio in entry["pairs"].items():
            if ratio["ratio"] is not None:
                for name in ("ratio", "low", "high"):
                    metrics[f"compare.{split}.{pair.replace('/', '_vs_')}.{name}"] = {
                        "value": float(ratio[name]),
                        "step": 0,
                    }
    return metrics
