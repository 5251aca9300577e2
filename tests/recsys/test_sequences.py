"""User sequences: the rebuilt train split of the seed data and the generic event-log path."""

from __future__ import annotations

import ast

import pandas as pd
import pytest

from rere_pipeline import validation
from rere_pipeline.pipelines.data import nodes
from rere_pipeline.recsys import sequences


@pytest.fixture(scope="module")
def seed_splits(raw_release):
    limits = validation.Limits()
    catalogue = validation.validate_catalogue(raw_release["items"], limits).clean
    valid = sequences.typed_release_rows(
        validation.validate_release_rows(raw_release["valid"], catalogue, limits).clean
    )
    test = sequences.typed_release_rows(
        validation.validate_release_rows(raw_release["test"], catalogue, limits).clean
    )
    events = sequences.release_events(valid, test)
    train, valid, test, cutoff = nodes.build_release_splits(
        events, catalogue, valid, test, {"history_max": 10, "cutoff": None}
    )
    return {
        "train": train,
        "valid": valid,
        "test": test,
        "cutoff": cutoff,
        "events": events,
        "catalogue": catalogue,
    }


def test_rebuilt_train_split_matches_the_documented_rebuild(seed_splits, raw_release):
    train, cutoff = seed_splits["train"], seed_splits["cutoff"]
    assert cutoff == int(raw_release["valid"]["timestamp"].astype(int).min()) == 1495152000
    assert 9_000 <= len(train) <= 11_000  # "roughly 10k training rows"
    assert (train["timestamp"] < cutoff).all()
    events_before = seed_splits["events"].query("timestamp < @cutoff")
    assert 12_000 <= len(events_before) <= 13_000  # "from 12.5k recoverable events"
    # one row per event after each user's first, histories of at most 10 earlier events
    per_user = events_before.groupby("user_id").size()
    assert len(train) == int((per_user - 1).sum())
    lengths = train["history_item_id"].map(len)
    assert lengths.between(1, 10).all()
    assert all(
        h[-1] <= t for h, t in zip(train["history_timestamp"], train["timestamp"], strict=True)
    )


def test_valid_and_test_rows_are_the_release_rows(seed_splits, raw_release):
    for split in ("valid", "test"):
        raw, rows = raw_release[split], seed_splits[split]
        assert len(rows) == len(raw)
        assert rows["user_id"].tolist() == raw["user_id"].tolist()
        assert rows["item_id"].tolist() == raw["item_id"].astype(int).tolist()
        assert rows["item_title"].tolist() == raw["item_title"].tolist()
        assert rows["timestamp"].tolist() == raw["timestamp"].astype(int).tolist()
        for column in sequences.HISTORY_LIST_COLUMNS:
            assert [list(v) for v in rows[column]] == [ast.literal_eval(c) for c in raw[column]], (
                column
            )


def test_train_titles_come_from_the_catalogue(seed_splits):
    titles = dict(
        zip(seed_splits["catalogue"]["item_id"], seed_splits["catalogue"]["title"], strict=True)
    )
    train = seed_splits["train"].sample(500, random_state=0)
    for ids, names, target, name in train[
        ["history_item_id", "history_item_title", "item_id", "item_title"]
    ].itertuples(index=False):
        assert [titles[i] for i in ids] == list(names)
        assert titles[target] == name


def test_release_events_order_by_time_then_history_order_and_drop_duplicates():
    rows = pd.DataFrame(
        {
            "user_id": ["u", "u"],
            # same timestamp 5 for items 7 and 3: history order (7 before 3) breaks the tie;
            # item 9 appears twice at time 1 (an exact duplicate)
            "history_item_id": [[9, 9, 7], [9, 7, 3]],
            "history_item_title": [["a", "a", "b"], ["a", "b", "c"]],
            "history_rating": [[5.0, 5.0, 4.0], [5.0, 4.0, 3.0]],
            "history_timestamp": [[1, 1, 5], [1, 5, 5]],
            "item_id": [3, 8],
            "item_title": ["c", "d"],
            "rating": [3.0, 2.0],
            "timestamp": [5, 6],
        }
    )
    events = sequences.release_events(rows.iloc[:1], rows.iloc[1:])
    assert events["item_id"].tolist() == [9, 7, 3, 8]
    assert events["order"].tolist() == [0, 1, 2, 3]


def _catalogue(n: int = 10) -> pd.DataFrame:
    return pd.DataFrame({"item_id": range(n), "title": [f"item {i}" for i in range(n)]})


def test_summary_counts_items_that_share_a_title(seed_splits):
    splits = {name: seed_splits[name] for name in ("train", "valid", "test")}
    summary = sequences.summarise(
        splits, seed_splits["catalogue"], seed_splits["events"], seed_splits["cutoff"]
    )
    # the seed catalogue: 3,686 items under 3,646 titles; 55 items share one of 15 titles,
    # 27 of them a scraped placeholder
    assert summary["items"] == 3686 and summary["distinct_titles"] == 3646
    assert summary["items_sharing_a_title"] == 55
    assert summary["largest_title_group"] == 27
    assert summary["largest_title_group_title"] == 'Industrial & Scientific" />'

    catalogue = _catalogue(4).assign(title=["a", "b", "a", "c"])
    small = sequences.summarise(splits, catalogue, seed_splits["events"], seed_splits["cutoff"])
    assert (small["distinct_titles"], small["items_sharing_a_title"]) == (3, 2)
    assert (small["largest_title_group"], small["largest_title_group_title"]) == (2, "a")
    unique = sequences.summarise(splits, _catalogue(4), seed_splits["events"], 0)
    assert (unique["items_sharing_a_title"], unique["largest_title_group"]) == (0, 1)


def test_generic_event_log_builds_windowed_rows_and_splits_by_time():
    log = pd.DataFrame(
        {
            "user_id": ["a"] * 5 + ["b"] * 3,
            "item_id": [1, 2, 3, 4, 5, 6, 7, 7],
            "timestamp": [10, 20, 30, 40, 50, 15, 25, 25],  # b's last event duplicates its second
            "rating": [5, 4, 3, 2, 1, 5, 5, 5],
        }
    )
    events = sequences.events_from_log(log)
    assert len(events) == 7
    rows = sequences.build_sequences(events, _catalogue(), history_max=2)
    assert len(rows) == 4 + 1
    last_a = rows[rows["user_id"] == "a"].iloc[-1]
    assert list(last_a["history_item_id"]) == [3, 4] and last_a["item_id"] == 5
    assert list(last_a["history_item_title"]) == ["item 3", "item 4"]
    splits = sequences.split_by_time(rows, valid_start=30, test_start=50)
    assert splits["train"]["timestamp"].tolist() == [20, 25]
    assert splits["valid"]["timestamp"].tolist() == [30, 40]
    assert splits["test"]["timestamp"].tolist() == [50]
    sequences.check_no_leakage(
        splits["train"], cutoff=30, held_out=[splits["valid"], splits["test"]]
    )


def test_cutoffs_accept_iso_dates():
    assert sequences.to_unix_seconds("2017-05-19") == 1495152000
    assert sequences.to_unix_seconds(1495152000) == 1495152000
    assert sequences.to_unix_seconds(None) is None


def test_leakage_check_fails_on_a_late_train_target(seed_splits):
    train = seed_splits["train"].copy()
    train.loc[0, "timestamp"] = seed_splits["cutoff"]
    with pytest.raises(sequences.LeakageError, match="at or after the cutoff 1495152000"):
        sequences.check_no_leakage(train, seed_splits["cutoff"])


def test_leakage_check_fails_when_a_held_out_target_is_trained_on(seed_splits):
    valid = seed_splits["valid"]
    train = pd.concat([seed_splits["train"], valid.iloc[:1]], ignore_index=True)
    with pytest.raises(sequences.LeakageError, match="also held-out targets"):
        sequences.check_no_leakage(train, cutoff=10**10, held_out=[valid])


def test_a_cutoff_after_the_first_valid_target_is_refused(seed_splits):
    with pytest.raises(sequences.LeakageError, match="after the earliest valid target"):
        nodes.build_release_splits(
            seed_splits["events"],
            seed_splits["catalogue"],
            seed_splits["valid"],
            seed_splits["test"],
            {"history_max": 10, "cutoff": "2017-06-01"},
        )
