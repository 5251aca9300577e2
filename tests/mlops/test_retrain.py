"""The event store, the moved splits and the retrain lock, on small hand-made logs."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from rere_pipeline import validation
from rere_pipeline.mlops import retrain
from rere_pipeline.pipelines.retrain.nodes import retrain_cycle

DAY = 86_400
T0 = 1_500_000_000  # 2017-07-14: a plausible event time
CATALOGUE = pd.DataFrame({"item_id": [1, 2, 3, 4], "title": ["A", "B", "C", "D"]})


def events(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).assign(rating=5.0)
    return frame.assign(timestamp=frame["timestamp"] + T0).astype({"user_id": str})


def cycle_params(tmp_path, **extra) -> dict:
    """``parameters_retrain.yml``'s folders under ``tmp_path`` (plus ``extra``)."""
    return {
        "store_dir": str(tmp_path / "store"),
        "lock_file": str(tmp_path / "store/.lock"),
        "new_logs_dir": str(tmp_path / "new_logs"),
        "quarantine_dir": str(tmp_path / "quarantine"),
        **extra,
    }


def _new(path) -> list[retrain.NewFile]:
    return [retrain.NewFile(path, retrain.sha256(path))]


def test_moved_splits_hold_out_the_newest_windows():
    # two users, one event every 5 days for 60 days
    log = events([(u, 1 + (d // 5) % 4, d * DAY) for u in ("u", "v") for d in range(0, 60, 5)])
    splits, windows = retrain.moved_splits(
        retrain.sequences.events_from_log(log), CATALOGUE, history_max=3, window_days=10
    )
    newest = T0 + 55 * DAY
    assert (splits["test"]["timestamp"] > newest - 10 * DAY).all()
    assert (splits["valid"]["timestamp"] > newest - 20 * DAY).all()
    assert (splits["valid"]["timestamp"] <= newest - 10 * DAY).all()
    assert (splits["train"]["timestamp"] <= newest - 20 * DAY).all()
    assert windows["test_rows"] == 4 and windows["valid_rows"] == 4 and windows["train_rows"] == 14
    assert splits["test"]["history_item_id"].map(len).max() == 3
    with pytest.raises(ValueError, match="the train split is empty with window_days=30"):
        retrain.moved_splits(retrain.sequences.events_from_log(log), CATALOGUE, 3, 30)


def test_the_store_ingests_each_file_once_whatever_its_name(tmp_path):
    store = retrain.EventStore(tmp_path / "store")
    store.ensure_base(events([("u", 1, 10), ("u", 2, 20)]))
    drop = tmp_path / "new_logs"
    drop.mkdir()
    events([("u", 2, 20), ("u", 3, 30), ("v", 4, 40)]).to_csv(drop / "day1.csv", index=False)
    pd.DataFrame({"item_id": ["5"], "title": ["E"]}).to_csv(drop / "items_new.csv", index=False)
    files = store.new_files(drop)
    assert [f.path.name for f in files] == ["items_new.csv", "day1.csv"]  # catalogue first

    limits = validation.Limits.from_params({"max_bad_fraction": 0.5})
    batch = retrain.validate_new_files(
        files, store.catalogue(CATALOGUE), limits, tmp_path / "quarantine", store.events()
    )
    assert batch.new_events == 2 and not batch.quarantine  # (u, 2, 20) is stored already
    store.commit(batch)
    assert len(store.events()) == 4
    assert store.catalogue(CATALOGUE)["title"].tolist() == ["A", "B", "C", "D", "E"]
    assert [e["file"] for e in store.ledger()] == ["items_new.csv", "day1.csv"]
    assert [(e["accepted"], e.get("already_stored")) for e in store.ledger()] == [(1, None), (2, 1)]

    (drop / "day1.csv").rename(drop / "day1_again.csv")
    assert store.new_files(drop) == []


def test_a_file_changed_within_the_settle_time_waits_for_the_next_run(tmp_path):
    import os
    import time

    store = retrain.EventStore(tmp_path / "store")
    drop = tmp_path / "new_logs"
    drop.mkdir()
    events([("u", 1, 10)]).to_csv(drop / "copying.csv", index=False)  # just written
    events([("u", 2, 20)]).to_csv(drop / "done.csv", index=False)
    old = time.time() - 120
    os.utime(drop / "done.csv", (old, old))
    assert [f.path.name for f in store.new_files(drop, settle_seconds=30)] == ["done.csv"]
    assert len(store.new_files(drop)) == 2
    # a clock skew: a file dated a day ahead is taken, not held for a day
    ahead = time.time() + DAY
    os.utime(drop / "copying.csv", (ahead, ahead))
    assert len(store.new_files(drop, settle_seconds=30)) == 2
    # a catalogue file still settling holds the whole drop: its events may name its items
    pd.DataFrame({"item_id": ["5"], "title": ["E"]}).to_csv(drop / "items_new.csv", index=False)
    assert store.new_files(drop, settle_seconds=30) == []


def test_events_already_stored_or_earlier_in_the_batch_are_not_new(tmp_path):
    store = retrain.EventStore(tmp_path / "store")
    store.ensure_base(events([("u", 1, 10), ("u", 2, 20)]))
    drop = tmp_path / "new_logs"
    drop.mkdir()
    # a re-export of stored events, columns reordered and ids as text, then two overlapping logs
    events([("u", 2, 20), ("u", 1, 10)])[["timestamp", "item_id", "user_id"]].to_csv(
        drop / "a_export.csv", index=False
    )
    events([("v", 3, 30), ("v", 4, 40)]).to_parquet(drop / "b_week.parquet")
    events([("v", 4, 40), ("w", 1, 50)]).to_csv(drop / "c_week.csv", index=False)
    limits = validation.Limits.from_params({"max_bad_fraction": 0.5})
    batch = retrain.validate_new_files(
        store.new_files(drop), CATALOGUE, limits, tmp_path / "q", store.events()
    )
    counts = [(f["file"], f["accepted"], f["already_stored"]) for f in batch.files]
    assert counts == [("a_export.csv", 0, 2), ("b_week.parquet", 2, 0), ("c_week.csv", 1, 1)]
    assert batch.new_events == 3 and len(batch.events) == 2  # nothing kept of the re-export


def test_a_drop_with_nothing_new_is_recorded_without_retraining(
    tmp_path, monkeypatch, tiny_backbone
):
    """Catalogue additions and re-sent events: a no-op cycle that records the files (before,
    every scheduled run failed on them until a real log arrived). A new title the champion's
    tokenizer would read as a control token first stops the drop: in the store, it would stop
    every later retrain, and left out, the drop's events on that item would be lost."""
    from rere_pipeline.pipelines.retrain import nodes

    loads = []  # the champion is stubbed: only its tokenizer is used by a cycle with no news
    monkeypatch.setattr(nodes, "load_champion", lambda p: loads.append(p) or (None, tiny_backbone))
    eos = tiny_backbone.tokenizer.eos_token
    params = cycle_params(tmp_path)
    seed = events([("u", 1, 10), ("u", 2, 20)])
    drop = tmp_path / "new_logs"
    drop.mkdir()
    items = pd.DataFrame({"item_id": ["5", "6"], "title": ["E", f"F {eos}"]})
    items.to_csv(drop / "items_new.csv", index=False)
    seed.to_csv(drop / "resent.csv", index=False)
    data_params = {"validation": {"max_bad_fraction": 0.5}}
    # no registry or training parameters: a cycle that went on to train would fail
    with pytest.raises(
        validation.DataValidationError,
        match=rf"items_new.csv: 1 title\(s\) spell .*item 6 'F {re.escape(eos)}'.*"
        r"title.control_token(?s:.*)the whole drop waits",
    ):
        retrain_cycle(CATALOGUE, seed, params, data_params, *[None] * 5)
    store = retrain.EventStore(params["store_dir"])
    assert store.ledger() == [] and sorted(p.name for p in drop.iterdir()) == [
        "items_new.csv",
        "resent.csv",
    ]
    [quarantined] = (tmp_path / "quarantine").glob("items_new-*.csv")
    rows = pd.read_csv(quarantined)  # the second row of the file: its position is named
    assert rows[["source_row", "item_id", "rules"]].values.tolist() == [
        [1, 6, "title.control_token"]
    ]

    items.assign(title=["E", "F"]).to_csv(drop / "items_new.csv", index=False)  # fixed
    report = retrain_cycle(CATALOGUE, seed, params, data_params, *[None] * 5)
    assert (
        report["status"] == "no-op"
        and "2 already stored, 2 catalogue additions" in report["message"]
    )
    assert [e["file"] for e in store.ledger()] == ["items_new.csv", "resent.csv"]
    assert len(store.events()) == 2 and store.catalogue(CATALOGUE)["title"].iloc[-1] == "F"
    assert len(loads) == 2  # the champion's tokenizer, for the catalogue file only
    again = retrain_cycle(CATALOGUE, seed, params, data_params, *[None] * 5)
    assert again["status"] == "no-op" and "no new logs" in again["message"]


def test_a_fatal_file_fails_one_retrain_then_no_longer_blocks_the_others(tmp_path):
    """A fatal file used to stay in the drop and fail every scheduled retrain after it."""
    params = cycle_params(tmp_path)
    seed = events([("u", 1, 10), ("u", 2, 20)])
    (tmp_path / "new_logs").mkdir()
    seed.to_csv(tmp_path / "new_logs/resent.csv", index=False)
    seed.drop(columns="timestamp").to_csv(tmp_path / "new_logs/no_time.csv", index=False)
    data_params = {"validation": {"max_bad_fraction": 0.01}}
    with pytest.raises(validation.DataValidationError, match="no_time.csv: required column"):
        retrain_cycle(CATALOGUE, seed, params, data_params, *[None] * 5)
    store = retrain.EventStore(params["store_dir"])
    assert store.ledger() == []  # nothing recorded: resent.csv waits for the next cycle
    assert [p.name for p in (tmp_path / "new_logs").iterdir()] == ["resent.csv"]
    # no model, registry or training parameters: re-sent events only, a no-op cycle
    report = retrain_cycle(CATALOGUE, seed, params, data_params, *[None] * 5)
    assert report["status"] == "no-op" and [e["file"] for e in store.ledger()] == ["resent.csv"]


def test_bad_rows_are_quarantined_and_a_fatal_file_stops_everything(tmp_path):
    drop, quarantine_dir = tmp_path / "new_logs", tmp_path / "quarantine"
    drop.mkdir()
    rows = [("u", str(1 + i % 4), str(T0 + i)) for i in range(9)] + [("u", "77", str(T0))]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(
        drop / "a.csv", index=False
    )
    limits = validation.Limits.from_params({"max_bad_fraction": 0.2})
    batch = retrain.validate_new_files(_new(drop / "a.csv"), CATALOGUE, limits, quarantine_dir)
    [(name, quarantine)] = batch.quarantine.items()
    assert name.startswith("a-") and quarantine["rules"].tolist() == ["item_id.in_catalogue"]
    assert quarantine["source_line"].tolist() == [11] and batch.new_events == 9
    assert pd.read_csv(quarantine_dir / f"{name}.csv")["item_id"].tolist() == [77]

    pd.DataFrame({"user_id": ["u"], "item_id": ["1"]}).to_csv(drop / "b.csv", index=False)
    [b] = _new(drop / "b.csv")
    with pytest.raises(validation.DataValidationError, match="b.csv: required column 'timestamp'"):
        retrain.validate_new_files([b], CATALOGUE, limits, quarantine_dir)
    # moved out of the drop with its error beside it: the next retrain does not fail on it
    rejected = quarantine_dir / f"rejected/b-{b.sha256[:8]}.csv"
    assert not b.path.exists() and retrain.sha256(rejected) == b.sha256
    error = rejected.with_name(f"{rejected.name}.error.txt").read_text()
    assert "b.csv: required column 'timestamp' is missing" in error
    assert (drop / "a.csv").exists()


def test_a_fatal_catalogue_file_keeps_the_whole_drop_waiting(tmp_path):
    """Its events may name the items it adds: moving it aside would let them in without it."""
    drop, quarantine_dir = tmp_path / "new_logs", tmp_path / "quarantine"
    drop.mkdir()
    pd.DataFrame({"item_id": ["99"]}).to_csv(drop / "items_new.csv", index=False)  # no title
    events([("u", 99, 10)]).to_csv(drop / "week.csv", index=False)
    files = _new(drop / "items_new.csv") + _new(drop / "week.csv")
    limits = validation.Limits.from_params({"max_bad_fraction": 0.01})
    with pytest.raises(validation.DataValidationError, match="the whole drop waits for it"):
        retrain.validate_new_files(files, CATALOGUE, limits, quarantine_dir)
    assert sorted(p.name for p in drop.iterdir()) == ["items_new.csv", "week.csv"]
    assert not (quarantine_dir / "rejected").exists()


def test_a_fatal_file_that_cannot_be_moved_stays_and_still_names_its_rule(tmp_path, monkeypatch):
    drop, quarantine_dir = tmp_path / "new_logs", tmp_path / "quarantine"
    drop.mkdir()
    pd.DataFrame({"user_id": ["u"], "item_id": ["1"]}).to_csv(drop / "b.csv", index=False)

    def refuse(source, target):
        raise PermissionError(f"read-only: {source}")

    monkeypatch.setattr(retrain.shutil, "move", refuse)
    limits = validation.Limits.from_params({"max_bad_fraction": 0.01})
    with pytest.raises(
        validation.DataValidationError,
        match=r"(?s)b.csv: required column 'timestamp'.*Could not move b.csv out of the drop",
    ):
        retrain.validate_new_files(_new(drop / "b.csv"), CATALOGUE, limits, quarantine_dir)
    assert (drop / "b.csv").exists()


def test_a_quarantined_row_names_its_line_past_blank_lines(tmp_path):
    drop = tmp_path / "new_logs"
    drop.mkdir()
    header = "user_id,item_id,timestamp"
    (drop / "d.csv").write_text(f"{header}\nu,1,{T0}\n\n\nu,77,{T0 + 1}\n  \nu,2,{T0 + 2}\n")
    limits = validation.Limits.from_params({"max_bad_fraction": 0.5})
    batch = retrain.validate_new_files(_new(drop / "d.csv"), CATALOGUE, limits, tmp_path / "q")
    [quarantine] = batch.quarantine.values()
    assert quarantine["source_row"].tolist() == [1] and quarantine["source_line"].tolist() == [5]
    assert batch.new_events == 2

    # a cell past the csv module's field limit: pandas reads it, the line is left unknown
    (drop / "e.csv").write_text(f"{header}\n{'u' * 200_000},1,{T0}\nu,77,{T0}\n")
    batch = retrain.validate_new_files(_new(drop / "e.csv"), CATALOGUE, limits, tmp_path / "q")
    [quarantine] = batch.quarantine.values()
    assert quarantine["source_row"].tolist() == [1] and quarantine["source_line"].isna().all()


def test_a_fatal_file_still_leaves_its_bad_rows_in_the_quarantine(tmp_path):
    drop, quarantine_dir = tmp_path / "new_logs", tmp_path / "quarantine"
    drop.mkdir()
    rows = [("u", "1", str(T0 + i)) for i in range(5)] + [("u", "77", str(T0))] * 5
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(
        drop / "c.csv", index=False
    )
    limits = validation.Limits.from_params({"max_bad_fraction": 0.2})
    with pytest.raises(validation.DataValidationError, match="c.csv: 5 of 10 rows"):
        retrain.validate_new_files(_new(drop / "c.csv"), CATALOGUE, limits, quarantine_dir)
    [written] = quarantine_dir.glob("c-*.csv")
    saved = pd.read_csv(written)
    assert saved["source_line"].tolist() == [7, 8, 9, 10, 11]
    assert set(saved["rules"]) == {"item_id.in_catalogue"}


def test_null_cells_of_a_parquet_log_break_the_rules_like_empty_csv_cells(tmp_path):
    drop = tmp_path / "new_logs"
    drop.mkdir()
    frame = pd.DataFrame(
        {
            "user_id": ["u", None, "v", "w"],
            "item_id": pd.array([1, 2, None, 3], dtype="Int64"),
            "timestamp": [T0, T0 + 1, T0 + 2, T0 + 3],
        }
    )
    frame.to_parquet(drop / "d.parquet", index=False)
    limits = validation.Limits.from_params({"max_bad_fraction": 0.5})
    batch = retrain.validate_new_files(
        _new(drop / "d.parquet"), CATALOGUE, limits, tmp_path / "quarantine"
    )
    [quarantine] = batch.quarantine.values()
    assert quarantine["source_row"].tolist() == [1, 2]
    assert quarantine["rules"].tolist()[0] == "user_id.non_empty"
    assert "item_id.integer" in quarantine["rules"].tolist()[1]
    assert batch.new_events == 2


def test_an_unreadable_file_still_leaves_the_batchs_bad_rows_in_the_quarantine(tmp_path):
    drop, quarantine_dir = tmp_path / "new_logs", tmp_path / "quarantine"
    drop.mkdir()
    rows = [("u", "1", str(T0 + i)) for i in range(9)] + [("u", "77", str(T0))]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(
        drop / "a.csv", index=False
    )
    (drop / "b.parquet").write_bytes(b"not a parquet file")
    limits = validation.Limits.from_params({"max_bad_fraction": 0.2})
    files = _new(drop / "a.csv") + _new(drop / "b.parquet")
    with pytest.raises(validation.DataValidationError, match="b.parquet: file is unreadable"):
        retrain.validate_new_files(files, CATALOGUE, limits, quarantine_dir)
    [written] = quarantine_dir.glob("a-*.csv")
    assert pd.read_csv(written)["item_id"].tolist() == [77]
    assert sorted(p.name for p in drop.iterdir()) == ["a.csv"]  # only the fatal file moved
    assert len(list((quarantine_dir / "rejected").glob("b-*.parquet"))) == 1


def test_a_parquet_integer_column_stored_as_float_for_its_nulls_reads_as_integers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    drop = tmp_path / "new_logs"
    drop.mkdir()
    # as pyarrow, Spark or DuckDB write it: no pandas metadata, a float column for the null
    table = pa.table(
        {
            "user_id": ["u", "v", "w"],
            "item_id": pa.array([1.0, None, 2.0], pa.float64()),
            "timestamp": pa.array([T0, T0 + 1, T0 + 2], pa.int64()),
            "rating": pa.array([4.5, 5.0, 3.0], pa.float64()),
        }
    )
    pq.write_table(table, drop / "e.parquet")
    raw = retrain.read_log(drop / "e.parquet")
    assert raw["item_id"].tolist() == ["1", "", "2"]
    assert raw["rating"].tolist() == ["4.5", "5.0", "3.0"]  # a real float column stays
    limits = validation.Limits.from_params({"max_bad_fraction": 0.5})
    batch = retrain.validate_new_files(
        _new(drop / "e.parquet"), CATALOGUE, limits, tmp_path / "quarantine"
    )
    [quarantine] = batch.quarantine.values()
    assert quarantine["source_row"].tolist() == [1] and batch.new_events == 2
    assert quarantine["source_line"].isna().all()  # a Parquet file has no lines to point at


def test_a_catalogue_drop_cannot_retitle_a_known_item(tmp_path):
    drop = tmp_path / "new_logs"
    drop.mkdir()
    pd.DataFrame({"item_id": ["2", "3", "5"], "title": ["B corrected", "C", "E"]}).to_csv(
        drop / "items_fix.csv", index=False
    )
    limits = validation.Limits.from_params({"max_bad_fraction": 0.5})
    batch = retrain.validate_new_files(
        _new(drop / "items_fix.csv"), CATALOGUE, limits, tmp_path / "quarantine"
    )
    [quarantine] = batch.quarantine.values()
    assert quarantine["rules"].tolist() == ["item_id.known_title"]
    assert quarantine["source_line"].tolist() == [2] and quarantine["title"].tolist() == [
        "B corrected"
    ]
    [additions] = batch.items.values()
    assert additions["item_id"].tolist() == [5]  # "C" is known as it is: nothing new
    assert batch.files[0]["accepted"] == 1 and batch.files[0]["quarantined"] == 1


def test_a_held_lock_refuses_a_second_retrain(tmp_path):
    with retrain.retrain_lock(tmp_path / "x.lock"):
        with pytest.raises(retrain.RetrainLocked, match="another retrain is running"):
            with retrain.retrain_lock(tmp_path / "x.lock"):
                pass
    with retrain.retrain_lock(tmp_path / "x.lock"):  # released: free again
        pass


def test_the_demo_waits_for_no_running_retrain_and_writes_nothing_under_its_lock(tmp_path):
    from rere_pipeline.pipelines.retrain.nodes import demo_new_logs

    log = events([("u", 1, 0), ("u", 2, 40 * DAY), ("v", 3, 50 * DAY)])
    params = cycle_params(tmp_path, demo={"holdout_days": 30, "file": "demo.csv"})
    with retrain.retrain_lock(params["lock_file"]):  # a retrain is running
        with pytest.raises(retrain.RetrainLocked, match="another retrain is running"):
            demo_new_logs(log, params)
    assert not (tmp_path / "store" / "base.parquet").exists()
    assert not (tmp_path / "new_logs").exists()
    demo_new_logs(log, {**params, "settle_seconds": 30})  # released: the demo runs
    assert len(pd.read_csv(tmp_path / "new_logs" / "demo.csv")) == 2  # days 40 and 50
    # complete when it appears: a retrain started at once does not wait for it to settle
    store = retrain.EventStore(params["store_dir"])
    assert [f.path.name for f in store.new_files(params["new_logs_dir"], 30)] == ["demo.csv"]
    assert len(pd.read_parquet(tmp_path / "store" / "base.parquet")) == 1


def test_demo_hold_out_splits_the_newest_days():
    log = events([("u", 1, 0), ("u", 2, 40 * DAY), ("v", 3, 50 * DAY), ("v", 4, 70 * DAY)])
    older, held = retrain.hold_out_newest(log, days=30)
    assert held["timestamp"].tolist() == [T0 + 50 * DAY, T0 + 70 * DAY]
    assert older["timestamp"].tolist() == [T0, T0 + 40 * DAY]


def test_the_retrain_rescorer_scores_a_champion_promoted_during_the_cycle():
    from rere_pipeline.pipelines.retrain.nodes import new_rows_rescorer

    scored_afresh = []

    def score_uri(uri: str) -> float:
        scored_afresh.append(uri)
        return 0.5

    scored = {"models:/m/3": 0.2, "models:/m/2": 0.1}  # challenger, champion at the cycle's start
    rescore = new_rows_rescorer(scored, score_uri)
    assert rescore(["models:/m/3", "models:/m/2"]) == [0.2, 0.1] and scored_afresh == []
    # someone promoted v1 by hand meanwhile: it is scored on the cycle's rows, not trusted
    assert rescore(["models:/m/3", "models:/m/1"]) == [0.2, 0.5]
    assert scored_afresh == ["models:/m/1"]


def test_a_retrain_model_is_made_challenger_only_once_its_logs_are_committed(
    tmp_path, mlflow_store, monkeypatch
):
    """Training, scoring and model logging are stubbed (the cycle test in
    tests/pipelines/recommender runs them); the registry is a real MLflow one. A commit that
    fails must not leave the new version as the challenger: a `promote` could then make a model
    trained on logs the store does not know the champion."""
    import mlflow

    from rere_pipeline.mlops import registry
    from rere_pipeline.pipelines.retrain import nodes
    from rere_pipeline.recsys.backbone import Backbone

    client = mlflow.MlflowClient()
    client.create_registered_model("m")
    client.create_model_version("m", source=str(tmp_path))
    for alias in (registry.CHAMPION, registry.CHALLENGER):
        client.set_registered_model_alias("m", alias, "1")

    def register_model(model, catalogue, valid, tags, params, *_, challenger=True):
        version = str(client.create_model_version("m", source=str(tmp_path)).version)
        registry.tag_version("m", version, tags)
        if challenger:
            registry.set_challenger("m", version)
        return version, f"models:/m/{version}"

    def report(label, *_, **__):
        split = {"NDCG@10": 0.5, "rows": 2, "rows_fingerprint": "f"}
        return {label: {"valid": split, "test": split}}, None

    def commit(store, batch):
        raise OSError("disk full")

    stubs = {
        "load_backbone_from_model": lambda uri: Backbone(None, None),
        "encode_split": lambda model, rows, params, catalogue: rows,
        "evaluate_lm": report,
        "fine_tune": lambda model, *_: (model, {}, None, None),
        "reinforce": lambda model, *_: (model, {}, None),
        "register_model": register_model,
        "_log_metrics": lambda *_: None,  # would start an MLflow run of its own here
    }
    for name, stub in stubs.items():
        target = nodes.serving if name == "load_backbone_from_model" else nodes
        monkeypatch.setattr(target, name, stub)
    monkeypatch.setattr(retrain.EventStore, "commit", commit)

    params = cycle_params(tmp_path, window_days=10, sft={}, rere={})
    days = range(0, 70, 5)  # two users, one event every 5 days; the last two days are new
    log = events([(u, 1 + (d // 5) % 4, d * DAY) for u in ("u", "v") for d in days])
    (tmp_path / "new_logs").mkdir()
    newest = log["timestamp"] >= T0 + 60 * DAY
    log[newest].to_csv(tmp_path / "new_logs/week.csv", index=False)
    data_params = {"validation": {"max_bad_fraction": 0.01}, "history_max": 3}
    with pytest.raises(OSError, match="disk full"):
        retrain_cycle(
            CATALOGUE, log[~newest], params, data_params, {}, {}, {}, {}, {"model_name": "m"}
        )
    model = client.get_registered_model("m")
    assert sorted(int(v.version) for v in client.search_model_versions("name='m'")) == [1, 2]
    aliases = {alias: str(version) for alias, version in model.aliases.items()}
    assert aliases == {"champion": "1", "challenger": "1"}  # v2 has no alias
    assert client.get_model_version("m", "2").tags["warm_start_version"] == "1"
    assert retrain.EventStore(params["store_dir"]).ledger() == []
