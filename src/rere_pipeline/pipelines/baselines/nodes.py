"""Nodes of the ``baselines`` pipeline: thin wrappers around ``recsys.sasrec``.

SASRec ranks item ids; it is scored twice: by title (ids mapped to titles, a repeated title
keeping its first rank, as the LM is scored) under ``sasrec``, and by item id under
``sasrec_by_id``.
"""

from __future__ import annotations

import logging
import time

import pandas as pd
from matplotlib.figure import Figure

from rere_pipeline.pipelines.samples import scored_rows, selection_sample
from rere_pipeline.recsys import sasrec
from rere_pipeline.recsys.metrics import DEFAULT_KS, ranking_metrics, titles_by_first_occurrence

log = logging.getLogger(__name__)


def _num_items(catalogue: pd.DataFrame) -> int:
    """Catalogue size; SASRec needs the ids to be exactly ``0 .. n - 1``."""
    ids = sorted(int(i) for i in catalogue["item_id"])
    if ids != list(range(len(ids))):
        raise ValueError("SASRec needs catalogue item ids 0 .. n-1 without gaps")
    return len(ids)


def _metric_name(name: str) -> str:
    """MLflow metric names may not contain '@': ``NDCG@10`` -> ``NDCG_at_10``."""
    return name.replace("@", "_at_")


def train_sasrec(
    train: pd.DataFrame, valid: pd.DataFrame, catalogue: pd.DataFrame, params: dict
) -> tuple[sasrec.SASRec, dict, Figure]:
    """Train SASRec; return the best model, its per-epoch MLflow metrics and a plot.

    Early stopping chooses the epoch on ``valid_rows`` valid rows
    (``samples.selection_sample``), clear of the rows evaluation reports on."""
    config = sasrec.SASRecConfig(num_items=_num_items(catalogue), **params["model"])
    chooser = selection_sample(valid, params.get("valid_rows"))
    started = time.perf_counter()
    model, history = sasrec.train_sasrec(
        train, chooser, config, params["train"], progress=bool(params.get("progress", True))
    )
    seconds = time.perf_counter() - started
    best = max(history, key=lambda r: r["valid_ndcg@10"])
    log.info(
        "sasrec: %d epochs in %.1f s, best epoch %d (valid NDCG@10 by id %.4f)",
        len(history),
        seconds,
        best["epoch"],
        best["valid_ndcg@10"],
    )
    metrics: dict = {
        _metric_name(key): [{"value": float(r[key]), "step": r["epoch"]} for r in history]
        for key in ("train_loss", "valid_ndcg@10", "valid_hr@10")
    }
    metrics |= {
        "epochs_run": {"value": float(len(history)), "step": 0},
        "best_epoch": {"value": float(best["epoch"]), "step": 0},
        "train_seconds": {"value": seconds, "step": 0},
    }
    return model, metrics, _training_plot(history, best["epoch"])


def _training_plot(history: list[dict], best_epoch: int) -> Figure:
    epochs = [r["epoch"] for r in history]
    figure = Figure(figsize=(9, 3.5), layout="constrained")
    loss_ax, valid_ax = figure.subplots(1, 2)
    loss_ax.plot(epochs, [r["train_loss"] for r in history])
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="train loss")
    for key in ("valid_ndcg@10", "valid_hr@10"):
        valid_ax.plot(epochs, [r[key] for r in history], label=key.removeprefix("valid_"))
    valid_ax.set(xlabel="epoch", title="valid (by item id)")
    valid_ax.legend()
    for ax in (loss_ax, valid_ax):
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
    figure.suptitle(f"SASRec training (best epoch {best_epoch})")
    return figure


def _split_entry(split: str, rows: int, metrics: dict[str, float]) -> dict:
    return {"split": split, "rows": rows, "valid_fraction": 1.0, "beam_width": None, **metrics}


def evaluate_sasrec(
    model: sasrec.SASRec,
    valid: pd.DataFrame,
    test: pd.DataFrame,
    catalogue: pd.DataFrame,
    params: dict,
    max_rows: dict | int | None,
) -> tuple[dict, pd.DataFrame, dict]:
    """HR/NDCG@K by title and by item id on the rows ``evaluate`` scores the LMs on
    (``evaluate.max_rows``); the top-K predictions of every scored row, with its ``split``."""
    settings = params["eval"]
    ks = [int(k) for k in settings.get("ks", DEFAULT_KS)]
    max_k = max(ks)
    top_k = int(settings["predictions_k"])  # kept per row in the predictions
    titles = dict(zip(catalogue["item_id"].astype(int), catalogue["title"], strict=True))
    # Ranking max_k ids plus one per repeated title always leaves max_k distinct titles.
    depth = max_k + len(catalogue) - catalogue["title"].nunique()
    evaluation: dict = {"sasrec": {}, "sasrec_by_id": {}}
    predictions = []
    for split, rows in (("test", test), ("valid", valid)):
        rows = scored_rows(rows, max_rows, split)
        ranked_ids = sasrec.rank(
            model,
            rows,
            k=depth,
            batch_size=int(settings["batch_size"]),
            exclude_history=bool(settings["exclude_history"]),
        )
        ranked_titles = [titles_by_first_occurrence(r, titles)[:max_k] for r in ranked_ids]
        by_title = ranking_metrics(ranked_titles, rows["item_title"].tolist(), ks)
        by_id = ranking_metrics(
            [[str(i) for i in r[:max_k]] for r in ranked_ids],
            [str(int(i)) for i in rows["item_id"]],
            ks,
        )
        evaluation["sasrec"][split] = _split_entry(split, len(rows), by_title)
        evaluation["sasrec_by_id"][split] = _split_entry(split, len(rows), by_id)
        log.info(
            "sasrec %s: NDCG@10 %.4f by title, %.4f by id (%d rows)",
            split,
            by_title["NDCG@10"],
            by_id["NDCG@10"],
            len(rows),
        )
        predictions.append(
            pd.DataFrame(
                {
                    "split": split,
                    "row": rows.index.to_numpy(),  # position in the split (scored_rows)
                    "user_id": rows["user_id"].to_numpy(),
                    "item_id": rows["item_id"].to_numpy(),
                    "item_title": rows["item_title"].to_numpy(),
                    "ranked_item_ids": [r[:top_k] for r in ranked_ids],
                    "ranked_titles": [t[:top_k] for t in ranked_titles],
                }
            )
        )
    metrics = {
        _metric_name(f"{model_key}.{split}.{name}"): {"value": float(value), "step": 0}
        for model_key, splits in evaluation.items()
        for split, entry in splits.items()
        for name, value in entry.items()
        if name.startswith(("HR@", "NDCG@"))
    }
    return evaluation, pd.concat(predictions, ignore_index=True), metrics
