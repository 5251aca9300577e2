"""Nodes of the ``evaluate`` pipeline: score models on the official splits, report side by side."""

from __future__ import annotations

import logging
import time

import pandas as pd

from rere_pipeline.mlops.registry import rows_fingerprint
from rere_pipeline.recsys.backbone import Backbone
from rere_pipeline.recsys.decoding import DecodeTimings
from rere_pipeline.recsys.metrics import ranking_metrics
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
    recommender = CatalogueRecommender(
        backbone.tokenizer,
        backbone.model,
        catalogue,
        PromptTemplate.from_params(prompt_params),
        num_beams=int(params["beam_width"]),
        batch_size=int(params["batch_size"]),
        length_penalty=float(params.get("length_penalty", 0.0)),
    )
    known = set(catalogue["title"].astype(str))
    ks = [int(k) for k in params["ks"]]
    report, predictions = {}, []
    for split, prompts in splits.items():
        prompts = scored_rows(prompts, params, split)
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
            "rows_fingerprint": rows_fingerprint(prompts, int(params["beam_width"])),
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


def scored_rows(rows: pd.DataFrame, params: dict, split: str) -> pd.DataFrame:
    """The rows of ``split`` that evaluation scores: all, or a fixed sample (``max_rows``)."""
    limit = rows_limit(params.get("max_rows"), split)
    if not limit:
        return rows
    return rows.sample(n=min(limit, len(rows)), random_state=0).sort_index()


def rows_limit(max_rows, split: str) -> int | None:
    """``evaluate.max_rows``: null (whole split), one number for every split, or per split."""
    if isinstance(max_rows, dict):
        max_rows = max_rows.get(split)
    return int(max_rows) if max_rows else None


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


def markdown_table(evaluation: dict, params: dict) -> str:
    """One table per split: models as rows, HR@K and NDCG@K as columns."""
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
    lines.append(
        "Hits are matched by title (duplicate titles count, as in the paper); "
        "`sasrec_by_id` is SASRec matched by item id."
    )
    return "\n".join(lines) + "\n"


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


def mlflow_metrics(evaluation: dict) -> dict:
    """``{model}.{split}.HR_at_10`` ... (MLflow metric names cannot hold '@').

    Only the models this pipeline scores: the baselines pipeline logs its own, same names.
    """
    return {
        f"{model}.{split}.{name.replace('@', '_at_')}": {"value": float(value), "step": 0}
        for model, report in evaluation.items()
        for split, entry in report.items()
        for name, value in entry.items()
        if "@" in name or name in ("valid_fraction", "users_per_second")
    }
