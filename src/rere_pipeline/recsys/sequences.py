"""User sequences: from interaction rows or event logs to (history -> next item) rows.

Every split this project trains or scores on has the same columns (``ROW_COLUMNS``): the
user's previous items (oldest first, at most ``history_max``) and the target item.

Two ways in:

* the ReRe release (``valid.csv`` / ``test.csv``), whose rows already are sequences. The
  official valid and test rows are kept as they are; the unpublished training rows are
  rebuilt from the events those rows reveal (``release_events`` + ``build_sequences``),
  keeping only targets strictly before the cutoff (the earliest valid target);
* a generic event log (``user_id, item_id, timestamp[, rating]``), turned into rows by the
  same ``build_sequences`` and split in time by ``split_by_time``.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pandas as pd

ROW_COLUMNS = [
    "user_id",
    "history_item_id",
    "history_item_title",
    "history_rating",
    "history_timestamp",
    "item_id",
    "item_title",
    "rating",
    "timestamp",
]
EVENT_COLUMNS = ["user_id", "item_id", "timestamp", "rating", "order"]
# What makes two events one: the same user, item and time (a repeat is dropped, first kept).
EVENT_KEY = ["user_id", "timestamp", "item_id"]
HISTORY_LIST_COLUMNS = [c for c in ROW_COLUMNS if c.startswith("history_")]


class LeakageError(ValueError):
    """A training target lies at or after the cutoff that separates train from valid/test."""


def parse_list_cell(cell: object) -> list | None:
    """A Python-literal list cell (``"[1, 2]"``) as a list; ``None`` if it is not one.

    Uses ``ast.literal_eval``: data is never executed.
    """
    if isinstance(cell, list):
        return cell
    if not isinstance(cell, str):
        return None
    try:
        value = ast.literal_eval(cell)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, list) else None


def to_unix_seconds(value: int | float | str | None) -> int | None:
    """Unix seconds from an int, or an ISO date / datetime string (UTC); ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, int | float | np.integer):
        return int(value)
    parsed = datetime.fromisoformat(str(value))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def typed_release_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Validated release rows (cells as read from CSV) as ``ROW_COLUMNS`` with real types."""
    out = pd.DataFrame(
        {
            "user_id": rows["user_id"].astype(str),
            "item_id": rows["item_id"].astype(np.int64),
            "item_title": rows["item_title"].astype(str),
            "rating": rows["rating"].astype(np.float64),
            "timestamp": rows["timestamp"].astype(np.int64),
        },
        index=rows.index,
    )
    casts = {
        "history_item_id": int,
        "history_item_title": str,
        "history_rating": float,
        "history_timestamp": int,
    }
    for column, cast in casts.items():
        out[column] = [[cast(v) for v in parse_list_cell(cell)] for cell in rows[column]]
    return out[ROW_COLUMNS].reset_index(drop=True)


def release_events(*splits: pd.DataFrame) -> pd.DataFrame:
    """Every event the release rows reveal, deduplicated and ordered per user.

    An event is ``(user_id, timestamp, item_id)`` taken from any row's history or target.
    Rows are windows sliding along one sequence per user, so the first place an event is
    seen (row in time order, then position in the row) is its place in the sequence: events
    are ordered by time, ties broken by that history order, and exact duplicates dropped.
    """
    frames = []
    for split_no, split in enumerate(splits):
        frame = split.reset_index(drop=True)
        lengths = frame["history_item_id"].map(len).to_numpy(dtype=np.int64) + 1  # history + target

        def per_event(values: np.ndarray, lengths: np.ndarray = lengths) -> np.ndarray:
            return np.repeat(values, lengths)

        frames.append(
            pd.DataFrame(
                {
                    "user_id": per_event(frame["user_id"].to_numpy()),
                    "item_id": _concat_sequences(frame["history_item_id"], frame["item_id"]),
                    "timestamp": _concat_sequences(frame["history_timestamp"], frame["timestamp"]),
                    "rating": _concat_sequences(frame["history_rating"], frame["rating"]),
                    "row_time": per_event(frame["timestamp"].to_numpy()),
                    "split_no": split_no,
                    "row_no": per_event(np.arange(len(frame))),
                    "position": np.concatenate([np.arange(n) for n in lengths] or [np.arange(0)]),
                }
            )
        )
    events = pd.concat(frames, ignore_index=True)
    seen_order = ["user_id", "row_time", "split_no", "row_no", "position"]
    events = events.sort_values(seen_order, kind="stable")
    events = events.drop_duplicates(EVENT_KEY, keep="first")
    events = events.sort_values(["user_id", "timestamp", *seen_order[1:]], kind="stable")
    return _with_order(events[["user_id", "item_id", "timestamp", "rating"]])


def _concat_sequences(histories: pd.Series, targets: pd.Series) -> np.ndarray:
    values = [
        v for history, target in zip(histories, targets, strict=True) for v in (*history, target)
    ]
    return np.asarray(values)


def _with_order(events: pd.DataFrame) -> pd.DataFrame:
    events = events.reset_index(drop=True).astype(
        {"user_id": str, "item_id": np.int64, "timestamp": np.int64, "rating": np.float64}
    )
    events["order"] = events.groupby("user_id", sort=False).cumcount().astype(np.int64)
    return events[EVENT_COLUMNS]


def events_from_log(log: pd.DataFrame) -> pd.DataFrame:
    """A validated generic event log (``user_id, item_id, timestamp[, rating]``) as events.

    Events are ordered per user by time, ties kept in file order; exact duplicates of
    ``(user_id, timestamp, item_id)`` are dropped; a missing rating is NaN.
    """
    events = log.copy()
    if "rating" not in events:
        events["rating"] = np.nan
    events = events.astype(
        {"user_id": str, "item_id": np.int64, "timestamp": np.int64, "rating": np.float64}
    )
    events = events.drop_duplicates(EVENT_KEY, keep="first")
    events = events.sort_values(["user_id", "timestamp"], kind="stable")
    return _with_order(events[["user_id", "item_id", "timestamp", "rating"]])


def build_sequences(
    events: pd.DataFrame, catalogue: pd.DataFrame, history_max: int = 10
) -> pd.DataFrame:
    """One row per event after each user's first: the previous ``history_max`` events -> it."""
    if history_max < 1:
        raise ValueError(f"history_max must be at least 1, got {history_max}")
    titles = dict(zip(catalogue["item_id"].astype(np.int64), catalogue["title"], strict=True))
    ordered = events.sort_values(["user_id", "order"], kind="stable")
    records = []
    for user_id, group in ordered.groupby("user_id", sort=False):
        items = group["item_id"].tolist()
        times = group["timestamp"].tolist()
        ratings = group["rating"].tolist()
        for i in range(1, len(items)):
            start = max(0, i - history_max)
            records.append(
                (
                    user_id,
                    items[start:i],
                    [titles[item] for item in items[start:i]],
                    ratings[start:i],
                    times[start:i],
                    items[i],
                    titles[items[i]],
                    ratings[i],
                    times[i],
                )
            )
    rows = pd.DataFrame.from_records(records, columns=ROW_COLUMNS)
    return rows.astype(
        {"user_id": str, "item_id": np.int64, "rating": np.float64, "timestamp": np.int64}
    )


def split_by_time(rows: pd.DataFrame, valid_start: int, test_start: int) -> dict[str, pd.DataFrame]:
    """Temporal split by target time: train < valid_start <= valid < test_start <= test."""
    if not valid_start <= test_start:
        raise ValueError(f"valid_start ({valid_start}) must not be after test_start ({test_start})")
    ts = rows["timestamp"]
    masks = {
        "train": ts < valid_start,
        "valid": (ts >= valid_start) & (ts < test_start),
        "test": ts >= test_start,
    }
    return {name: rows[mask].reset_index(drop=True) for name, mask in masks.items()}


def check_no_leakage(
    train: pd.DataFrame, cutoff: int, held_out: Sequence[pd.DataFrame] = ()
) -> None:
    """Raise ``LeakageError`` if a train target is at/after ``cutoff`` or is a held-out target."""
    late = train[train["timestamp"] >= cutoff]
    if len(late):
        first = late.iloc[0]
        raise LeakageError(
            f"{len(late)} train target(s) at or after the cutoff {cutoff} "
            f"({iso_date(cutoff)}); first: user {first['user_id']!r}, item {first['item_id']}, "
            f"timestamp {first['timestamp']}"
        )
    keys = ["user_id", "item_id", "timestamp"]
    for frame in held_out:
        shared = train[keys].merge(frame[keys], on=keys)
        if len(shared):
            raise LeakageError(
                f"{len(shared)} train target(s) are also held-out targets, e.g. {shared.iloc[0].to_dict()}"
            )


def iso_date(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).date().isoformat()


def summarise(
    splits: dict[str, pd.DataFrame], catalogue: pd.DataFrame, events: pd.DataFrame, cutoff: int
) -> dict:
    """Sizes and time ranges of the splits, and how many items share a title
    (``data_summary.json``): the LMs recommend titles and a hit on any item of a shared title
    counts, so one large group (27 items titled ``Industrial & Scientific" />`` in the seed
    catalogue) can take a high rank for many users (docs/results.md)."""
    summary: dict = {f"{name}_rows": int(len(frame)) for name, frame in splits.items()}
    all_rows = pd.concat(splits.values(), ignore_index=True)
    summary.update(
        items=int(catalogue["item_id"].nunique()),
        users=int(all_rows["user_id"].nunique()),
        events=int(len(events)),
        cutoff=int(cutoff),
        cutoff_date=iso_date(cutoff),
        mean_history_length=round(float(all_rows["history_item_id"].map(len).mean()), 3),
    )
    items_per_title = catalogue["title"].astype(str).value_counts()
    if len(items_per_title):
        summary.update(
            distinct_titles=int(len(items_per_title)),
            items_sharing_a_title=int(items_per_title[items_per_title > 1].sum()),
            largest_title_group=int(items_per_title.iloc[0]),
            largest_title_group_title=str(items_per_title.index[0]),
        )
    for name, frame in splits.items():
        if len(frame):
            summary[f"{name}_first_target"] = iso_date(int(frame["timestamp"].min()))
            summary[f"{name}_last_target"] = iso_date(int(frame["timestamp"].max()))
    return summary
