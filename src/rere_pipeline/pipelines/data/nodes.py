"""Nodes of the ``data`` pipeline: thin wrappers around ``validation`` and ``recsys.sequences``."""

from __future__ import annotations

import logging

import pandas as pd

from rere_pipeline import validation
from rere_pipeline.recsys import sequences

log = logging.getLogger(__name__)


def validate_catalogue(
    raw_items: pd.DataFrame, params: dict
) -> tuple[pd.DataFrame, pd.DataFrame, validation.FileValidation]:
    outcome = validation.validate_catalogue(raw_items, validation.Limits.from_params(params))
    return outcome.clean, outcome.quarantine, outcome


def validate_interactions(
    raw_rows: pd.DataFrame, catalogue: pd.DataFrame, params: dict
) -> tuple[pd.DataFrame, pd.DataFrame, validation.FileValidation]:
    outcome = validation.validate_release_rows(
        raw_rows, catalogue, validation.Limits.from_params(params)
    )
    return outcome.clean, outcome.quarantine, outcome


def collect_validation(
    params: dict, *outcomes: validation.FileValidation
) -> tuple[dict, dict[str, str]]:
    """The validation report (JSON) and the Great Expectations Data Docs pages (HTML)."""
    report = validation.combined_report(list(outcomes), validation.Limits.from_params(params))
    pages = {name: html for o in outcomes for name, html in o.html.items()}
    return report, pages


def enforce_validation(
    report: dict, catalogue: pd.DataFrame, valid_raw: pd.DataFrame, test_raw: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Stop the run on any fatal finding; otherwise pass the clean rows on, typed."""
    validation.raise_if_fatal(report)
    return (
        catalogue,
        sequences.typed_release_rows(valid_raw),
        sequences.typed_release_rows(test_raw),
    )


def build_release_splits(
    events: pd.DataFrame,
    catalogue: pd.DataFrame,
    valid: pd.DataFrame,
    test: pd.DataFrame,
    params: dict,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, int]:
    """Rebuild train from events before the cutoff; keep the official valid and test rows."""
    earliest_valid = int(valid["timestamp"].min())
    cutoff = sequences.to_unix_seconds(params.get("cutoff")) or earliest_valid
    if cutoff > earliest_valid:
        raise sequences.LeakageError(
            f"data.cutoff {cutoff} is after the earliest valid target {earliest_valid}: train would see valid targets"
        )
    rows = sequences.build_sequences(events, catalogue, history_max=int(params["history_max"]))
    train = rows[rows["timestamp"] < cutoff].reset_index(drop=True)
    sequences.check_no_leakage(train, cutoff, held_out=[valid, test])
    log.info("rebuilt %d train rows from %d events before %d", len(train), len(events), cutoff)
    return train, valid, test, cutoff


def summarise(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    test: pd.DataFrame,
    catalogue: pd.DataFrame,
    events: pd.DataFrame,
    cutoff: int,
) -> tuple[dict, dict]:
    """``data_summary.json`` and the same numbers as MLflow metrics."""
    summary = sequences.summarise(
        {"train": train, "valid": valid, "test": test}, catalogue, events, cutoff
    )
    metrics = {
        k: {"value": float(v), "step": 0} for k, v in summary.items() if isinstance(v, int | float)
    }
    for key, value in summary.items():
        log.info("data summary: %s = %s", key, value)
    return summary, metrics
