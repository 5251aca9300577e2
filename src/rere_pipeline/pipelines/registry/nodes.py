"""Nodes of the ``register`` and ``promote`` pipelines."""

from __future__ import annotations

import logging

import pandas as pd

from rere_pipeline.mlops import registry, serving
from rere_pipeline.pipelines.samples import scored_rows
from rere_pipeline.recsys.backbone import Backbone, weights_digest
from rere_pipeline.recsys.prompts import PromptTemplate
from rere_pipeline.recsys.sequences import iso_date

log = logging.getLogger(__name__)


def register_challenger(
    sft_model: Backbone,
    rere_model: Backbone,
    catalogue: pd.DataFrame,
    valid: pd.DataFrame,
    evaluation: dict,
    params: dict,
    evaluate_params: dict,
    prompt_params: dict,
) -> dict:
    """Log the chosen LM (``registry.model``) as a pyfunc model, register it, alias it
    ``challenger`` and tag it with the valid and test scores ``evaluation.json`` holds."""
    which = params.get("model", "rere")
    model = {"rere": rere_model, "sft": sft_model}.get(which)
    if model is None:
        raise ValueError(f"registry.model must be 'rere' or 'sft', not {which!r}")
    scores = evaluation.get(which, {})
    if "valid" not in scores:
        raise ValueError(f"evaluation.json has no valid scores for {which!r}: run evaluate first")
    if scores["valid"].get("weights_sha256") != weights_digest(model.model):
        raise ValueError(
            f"evaluation.json scored other weights than the {which} model now on disk (it was "
            "trained again, e.g. by tune, after evaluate): run `kedro run --pipelines=evaluate` "
            "before registering, so that the version is tagged with its own scores"
        )
    tags = {"source_model": which, **score_tags(scores)}
    version, model_uri = register_model(
        model,
        catalogue,
        valid,
        tags,
        params,
        evaluate_params,
        prompt_params,
    )
    return {"model_name": params["model_name"], "version": version, "model_uri": model_uri, **tags}


def score_tags(scores: dict) -> dict[str, str]:
    """The version tags promotion reads, from a model's ``{"valid": ..., "test": ...}``
    evaluation report: valid NDCG@10 and the fingerprint and count of the rows it is on."""
    tags = {
        "valid_ndcg_at_10": f"{scores['valid']['NDCG@10']:.6f}",
        "valid_rows": scores["valid"]["rows_fingerprint"],
        "valid_row_count": str(scores["valid"]["rows"]),
    }
    if "test" in scores:
        tags["test_ndcg_at_10"] = f"{scores['test']['NDCG@10']:.6f}"
    return tags


def register_model(
    model: Backbone,
    catalogue: pd.DataFrame,
    valid: pd.DataFrame,
    tags: dict[str, str],
    params: dict,
    evaluate_params: dict,
    prompt_params: dict,
    challenger: bool = True,
) -> tuple[str, str]:
    """Log ``model`` as the pyfunc recommender (decoding as ``evaluate`` does), register it
    under ``registry.model_name`` and (``challenger``) make it the ``challenger``; returns
    (version, URI). The first ``valid`` row's history is the logged input example."""
    info = serving.log_recommender(
        model,
        catalogue,
        PromptTemplate.from_params(prompt_params),
        num_beams=int(evaluate_params["beam_width"]),
        batch_size=int(evaluate_params["batch_size"]),
        length_penalty=float(evaluate_params.get("length_penalty", 0.0)),
        k=int(params.get("k", 10)),
        example_history=[int(i) for i in valid["history_item_id"].iloc[0]],
        registered_model_name=params["model_name"],
        tags={"source_model": tags["source_model"]},
    )
    version = str(info.registered_model_version)
    # every row the model trained on has a target before the valid rows it is scored on
    trained_before = {registry.TRAINED_BEFORE: str(int(valid["timestamp"].min()))}
    registry.tag_version(params["model_name"], version, {**tags, **trained_before})
    if challenger:
        registry.set_challenger(params["model_name"], version)
    return version, info.model_uri


def promote_challenger(valid: pd.DataFrame, params: dict, evaluate_params: dict) -> dict:
    """Move ``champion`` to the challenger only if it beats the champion on valid NDCG@10.

    Two versions scored on different rows are scored again on the valid rows evaluation
    reports (no training chose on them) that neither trained on (``registry.promote``): all of
    them for two models of this release; none for a model a retrain trained on later events,
    which is then compared in its own cycle, not here."""

    def rescore(model_uris: list[str], newer_than: int | None) -> list[float]:
        # the rows evaluation reports (no training chose on them), then those after both trained
        reported = scored_rows(valid, evaluate_params.get("max_rows"), "valid")
        rows = reported if newer_than is None else reported[reported["timestamp"] >= newer_than]
        if rows.empty:
            raise ValueError(
                f"{' and '.join(model_uris)} were scored on different valid rows, and none of "
                f"the {len(reported)} rows of data/05_model_input/valid.parquet that evaluation "
                f"scores is from after both trained (one trained on events until "
                f"{iso_date(newer_than)}): on these rows the newer model would be judged on what "
                "it trained on. A retrain cycle compares its challenger with the champion on its "
                "own new valid window"
            )
        return serving.score_models(model_uris, rows, k=10)

    decision = registry.promote(
        params["model_name"], margin=float(params.get("margin", 0.0)), rescore=rescore
    )
    return registry.decision_report(decision)
