"""Nodes of the ``retrain`` and ``demo_new_logs`` pipelines.

One retrain cycle is one node, ``retrain_cycle``, because it is a transaction: it holds the
retrain lock from start to end, stops early (successfully) when there is nothing new, and
writes the event store only once the new model is registered, making it the challenger
after that (then decides the promotion: the champion moves last, when the logs it learnt from
are on record).
Each step calls the same node functions the ``prompts``, ``sft``, ``rere`` and ``evaluate``
pipelines use.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion

from rere_pipeline import validation
from rere_pipeline.atomic import replace_file
from rere_pipeline.mlops import registry, retrain, serving
from rere_pipeline.pipelines.evaluate.nodes import evaluate_lm, mlflow_metrics
from rere_pipeline.pipelines.prompts.nodes import encode_split
from rere_pipeline.pipelines.registry.nodes import register_model, score_tags
from rere_pipeline.pipelines.rere.nodes import reinforce
from rere_pipeline.pipelines.sft.nodes import fine_tune
from rere_pipeline.recsys.backbone import Backbone
from rere_pipeline.recsys.prompts import spelt_control_tokens

log = logging.getLogger(__name__)


def retrain_cycle(
    catalogue: pd.DataFrame,
    events: pd.DataFrame,
    params: dict,
    data_params: dict,
    prompt_params: dict,
    sft_params: dict,
    rere_params: dict,
    evaluate_params: dict,
    registry_params: dict,
) -> dict:
    """New logs -> validated events -> moved splits -> SFT + ReRe warm-started from the
    champion -> challenger vs champion on the new valid window -> register -> commit the logs
    to the event store -> promote. Returns the cycle's report."""
    store = retrain.EventStore(params["store_dir"])
    with retrain.retrain_lock(params["lock_file"]):
        store.ensure_base(events)
        files = store.new_files(params["new_logs_dir"], float(params.get("settle_seconds") or 0))
        if not files:
            message = f"no new logs in {params['new_logs_dir']}: nothing to retrain"
            log.info(message)
            return {"status": "no-op", "message": message, "processed": len(store.ledger())}
        names = [f.path.name for f in files]
        log.info("retrain: %d new file(s): %s", len(files), names)
        limits = validation.Limits.from_params(data_params["validation"])
        stored = store.events()
        loaded: list = []  # the champion, loaded on first use (a drop of re-sent events never)

        def champion() -> tuple[ModelVersion, Backbone]:
            if not loaded:
                loaded.append(load_champion(registry_params))
            return loaded[0]

        batch = retrain.validate_new_files(
            files,
            store.catalogue(catalogue),
            limits,
            params["quarantine_dir"],
            stored,
            # new titles must read as text to the tokenizer that trains on them
            title_problems=lambda titles: spelt_control_tokens(champion()[1].tokenizer, titles),
        )
        if not batch.new_events:
            # catalogue additions or events the store has already: nothing to learn from, but
            # on record, so that the next cycle does not read these files again
            store.commit(batch)
            repeated = sum(f.get("already_stored", 0) for f in batch.files)
            message = (
                f"no new event in {names} ({repeated} already stored, "
                f"{sum(len(i) for i in batch.items.values())} catalogue additions recorded): "
                "nothing to retrain"
            )
            log.info(message)
            return {
                "status": "no-op",
                "message": message,
                "files": batch.files,
                "processed": len(store.ledger()),
            }

        full_catalogue = store.catalogue(catalogue, batch.items)
        splits, windows = retrain.moved_splits(
            store.events(batch.events, stored),
            full_catalogue,
            int(data_params["history_max"]),
            int(params["window_days"]),
        )
        log.info("retrain splits: %s", windows)

        name = registry_params["model_name"]
        champion_version, start = champion()
        prompts = {
            s: encode_split(start, splits[s], prompt_params, full_catalogue)
            for s in ("train", "valid")
        }

        # the new windows, whole unless retrain.max_rows says otherwise (not evaluate.max_rows,
        # the release's sample sizes): promotion compares challenger and champion on them
        scoring = {**evaluate_params, "max_rows": params.get("max_rows")}

        def score(label: str, model: Backbone) -> dict:
            # prompts in the model's own tokens (a champion promoted by hand meanwhile may come
            # from another backbone); a few hundred rows, encoded in well under a second
            valid, test = (
                encode_split(model, splits[s], prompt_params, full_catalogue)
                for s in ("valid", "test")
            )
            report, _ = evaluate_lm(
                label, model, full_catalogue, scoring, prompt_params, valid=valid, test=test
            )
            return report[label]

        scores = {"champion": score("champion", start)}  # the new rows, before any training
        sft_model, sft_history, _, _ = fine_tune(
            Backbone(start.tokenizer, copy.deepcopy(start.model)),  # SFT trains in place
            prompts["train"],
            prompts["valid"],
            {**sft_params, **params["sft"]},
        )
        rere_model, rere_history, _ = reinforce(
            sft_model,
            start,
            full_catalogue,
            prompts["train"],
            splits["train"],
            prompts["valid"],
            None,  # SASRec knows only the seed catalogue: no collaborative reward here
            {**rere_params, **params["rere"]},
            prompt_params,
        )
        scores["challenger"] = score("challenger", rere_model)
        _log_metrics(scores, sft_history, rere_history)

        valid = scores["challenger"]["valid"]
        version, _ = register_model(
            rere_model,
            full_catalogue,
            splits["valid"],
            {
                "source_model": "retrain",
                "warm_start_version": str(champion_version.version),
                **score_tags(scores["challenger"]),
                # the champion on the same new rows: what a later `promote` compares with
                registry.COMPARED_WITH: str(champion_version.version),
                registry.COMPARED_SCORE: f"{scores['champion']['valid']['NDCG@10']:.6f}",
                "new_logs": ",".join(f["file"] for f in batch.files),
            },
            registry_params,
            evaluate_params,
            prompt_params,
            challenger=False,  # not before its logs are on record
        )

        # the challenger's logs are in a registered model now: record them before it can be
        # promoted (by this cycle or a `promote`), so that a failure never leaves a champion
        # trained on logs the store does not know (the next cycle would train on them again).
        # A failed commit leaves a registered version that no alias points to.
        store.commit(batch)

        def score_uri(uri: str) -> float:
            return score("champion", serving.load_backbone_from_model(uri))["valid"]["NDCG@10"]

        # the warm-start champion's score on these rows travels in the challenger's
        # compared_with_* tags; rescoring is only for a champion promoted by hand meanwhile
        rescore = new_rows_rescorer({f"models:/{name}/{version}": valid["NDCG@10"]}, score_uri)
        try:
            registry.set_challenger(name, version)
            # a challenger alias moved by another register meanwhile stops the promotion: this
            # cycle never scored that model
            decision = registry.promote(
                name,
                margin=float(registry_params.get("margin", 0.0)),
                rescore=rescore,
                expected_challenger=version,
            )
        except Exception:
            log.error(
                "retrain: the logs are committed and %s v%s is registered, but making it the "
                "challenger or promoting it failed: once the cause is fixed, give v%s the alias "
                "'challenger' if it lacks it, then run `kedro run --pipelines=promote`",
                name,
                version,
                version,
            )
            raise
    return {
        "status": "promoted" if decision.promoted else "challenger kept out",
        "files": batch.files,
        "windows": windows,
        "scores": {
            label: {
                split: {k: v for k, v in s.items() if "@" in k or k == "rows"}
                for split, s in r.items()
            }
            for label, r in scores.items()
        },
        "challenger_version": version,
        "decision": registry.decision_report(decision),
    }


def load_champion(registry_params: dict) -> tuple[ModelVersion, Backbone]:
    """The registry's champion version and its model (what a retrain starts from)."""
    name = registry_params["model_name"]
    champion = registry.version_by_alias(mlflow.MlflowClient(), name, registry.CHAMPION)
    if champion is None:
        raise ValueError(
            f"retrain warm-starts from the champion, and checks new titles with its tokenizer, "
            f"but {name!r} has none: run `full`, then `kedro run --pipelines=promote` first"
        )
    return champion, serving.load_backbone_from_model(f"models:/{name}/{champion.version}")


def new_rows_rescorer(
    scored: dict[str, float], score_uri: Callable[[str], float]
) -> Callable[[list[str]], list[float]]:
    """``registry.promote``'s ``rescore`` for a retrain cycle: the valid NDCG@10 the cycle
    measured on the new rows (``scored``, by model URI; the registered tags are older).

    A champion promoted by hand while the cycle trained is not in ``scored``: it is scored on
    the same rows with ``score_uri``."""

    def rescore(model_uris: list[str], newer_than: int | None = None) -> list[float]:
        # newer_than is moot: the cycle's valid window is newer than any model's training
        results = []
        for uri in model_uris:
            if uri not in scored:
                log.info("%s became champion during this retrain: scoring it on the new rows", uri)
                scored[uri] = score_uri(uri)
            results.append(scored[uri])
        return results

    return rescore


def _log_metrics(scores: dict, sft_history: dict, rere_history: dict) -> None:
    series = {
        **{f"retrain.sft.{k}": v for k, v in sft_history.items()},
        **{f"retrain.rere.{k}": v for k, v in rere_history.items()},
        **{f"retrain.{k}": [v] for k, v in mlflow_metrics(scores).items()},
    }
    for key, points in series.items():
        for point in points:
            mlflow.log_metric(key.replace("@", "_at_"), point["value"], step=point["step"])


def demo_new_logs(events: pd.DataFrame, params: dict) -> str:
    """Hold out the newest ``demo.holdout_days`` of the seed events as a new log file and
    start the event store from the rest, so that ``retrain`` has something real to learn.
    Holds the retrain lock: it rewrites the store a running retrain reads."""
    store = retrain.EventStore(params["store_dir"])
    with retrain.retrain_lock(params["lock_file"]):
        if store.ledger():
            raise ValueError(
                f"the event store {store.root} has processed logs already; the demo starts "
                "from a fresh store (delete that folder to run the demo again)"
            )
        older, held = retrain.hold_out_newest(events, int(params["demo"]["holdout_days"]))
        (store.root / "base.parquet").unlink(missing_ok=True)
        store.ensure_base(older)
        target = Path(params["new_logs_dir"]) / params["demo"]["file"]
        replace_file(target, lambda staging: held.to_csv(staging, index=False))
        # complete once it appears (written aside, then renamed): dated past the settle time
        # so that a retrain started right after does not wait for it to settle
        then = time.time() - float(params.get("settle_seconds") or 0)
        os.utime(target, (then, then))
    message = (
        f"demo: {len(held)} events of the last {params['demo']['holdout_days']} days written to "
        f"{target}; the event store starts from the {len(older)} older events"
    )
    log.info(message)
    return message
