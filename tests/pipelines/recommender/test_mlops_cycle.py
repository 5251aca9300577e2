"""The MLOps loop on the test profile, after `full`: promote, tune, and retrain on new logs."""

from __future__ import annotations

import json

import mlflow
import optuna
import pandas as pd
import pytest

from helpers import latest_kedro_run, mlflow_runs, run_cli
from rere_pipeline.mlops import retrain

pytestmark = pytest.mark.slow
NAME = "rere-recommender"
LEDGER = "data/03_primary/event_store/ledger.json"


def kedro(project, pipeline, check=True):
    return run_cli(
        ["kedro", "run", f"--pipelines={pipeline}", "--env=test"], cwd=project, check=check
    )


def registry_state(project):
    mlflow_runs(project)  # points MLflow at the project's store
    client = mlflow.MlflowClient()
    model = client.get_registered_model(NAME)
    versions = client.search_model_versions(f"name='{NAME}'")
    return {k: str(v) for k, v in model.aliases.items()}, sorted(int(v.version) for v in versions)


def output(result) -> str:
    return " ".join((result.stdout + result.stderr).split())  # undo rich's line wrapping


@pytest.fixture(scope="module")
def cycle(full_run):
    project, _ = full_run
    kedro(project, "promote")
    return project


def test_full_registers_a_challenger_that_promote_makes_champion(cycle):
    challenger = json.loads((cycle / "data/08_reporting/registry/challenger.json").read_text())
    assert challenger["source_model"] == "rere" and challenger["valid_row_count"] == "24"
    decision = json.loads((cycle / "data/08_reporting/registry/promotion.json").read_text())
    assert decision["promoted"] and decision["reason"].startswith("no champion yet")
    aliases, versions = registry_state(cycle)
    assert aliases == {"champion": "1", "challenger": "1"} and versions == [1]


def test_tune_runs_trials_as_nested_runs_and_trains_with_the_best(cycle):
    kedro(cycle, "tune")
    best = json.loads((cycle / "data/08_reporting/tuning/best.json").read_text())
    trials = pd.read_csv(cycle / "data/08_reporting/tuning/trials.csv")
    assert len(trials) == 3 and best["trials"] == 3
    assert set(best["best_params"]) == {"num_generations", "beta", "rewards"}
    assert best["best_params"]["rewards"]["rule"] == 1.0  # fixed weight kept
    assert best["best_value"] == trials["value"].max()
    runs = mlflow_runs(cycle)
    trial_runs = runs[runs["tags.optuna.study"] == "rere"]
    assert sorted(trial_runs["tags.mlflow.runName"]) == ["trial-0", "trial-1", "trial-2"]
    assert "metrics.valid_ndcg_at_10" in trial_runs
    for plot in ("history", "importance"):
        assert (cycle / f"data/08_reporting/tuning/{plot}.png").stat().st_size > 5_000
    # the study records what its trials' scores depend on: a later worker with another
    # setup is refused (tests/mlops/test_tuning.py)
    study = optuna.load_study(
        study_name="rere", storage=f"sqlite:///{cycle}/data/07_model_output/optuna.db"
    )
    setup = study.user_attrs["setup"]
    assert set(setup) == {"search_space", "rere", "prompts", "sft_weights"}
    assert len(setup["sft_weights"]) == 64 and setup["rere"]["max_steps"] == 2


def test_demo_retrain_registers_a_challenger_and_records_the_logs(cycle):
    kedro(cycle, "demo_new_logs")
    runs, parent = mlflow_runs(cycle), latest_kedro_run(cycle)
    stages = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"]]["tags.stage"].tolist()
    assert stages == ["demo_new_logs"]  # its own stage run, not a "retrain" one
    demo_log = cycle / "data/01_raw/new_logs/demo_last_month.csv"
    assert list(pd.read_csv(demo_log).columns) == ["user_id", "item_id", "timestamp", "rating"]
    kedro(cycle, "retrain")
    report = json.loads((cycle / "data/08_reporting/retrain/report.json").read_text())
    assert report["files"][0]["file"] == "demo_last_month.csv"
    assert report["files"][0]["accepted"] == len(pd.read_csv(demo_log))
    assert report["windows"]["newest_event"] == "2018-09-28"
    for split in ("valid", "test"):  # the new windows, capped by retrain.max_rows (20)
        assert report["windows"][f"{split}_rows"] > 24  # so 20 is not evaluate.max_rows' 24
        assert report["scores"]["challenger"][split]["rows"] == 20
        assert report["scores"]["champion"][split]["rows"] == 20
    assert report["challenger_version"] == "2"
    aliases, versions = registry_state(cycle)
    assert versions == [1, 2] and aliases["challenger"] == "2"
    decision = report["decision"]
    # both scored; promoted exactly when the challenger beats the champion by the margin
    assert decision["champion_version"] == "1" and decision["margin"] == 0.0
    better = decision["challenger_score"] > decision["champion_score"] + decision["margin"]
    assert decision["promoted"] == better
    assert aliases["champion"] == ("2" if better else "1")
    tags = mlflow.MlflowClient().get_model_version(NAME, "2").tags
    assert tags["promotion.decision"] == ("promoted" if better else "rejected")
    assert tags["warm_start_version"] == "1"
    assert [e["file"] for e in json.loads((cycle / LEDGER).read_text())] == ["demo_last_month.csv"]

    # nothing new: a no-op that says so, and the registry does not move
    again = kedro(cycle, "retrain")
    assert "no new logs in data/01_raw/new_logs: nothing to retrain" in output(again)
    assert registry_state(cycle) == (aliases, versions)


def test_a_second_retrain_is_refused_while_one_holds_the_lock(cycle):
    (cycle / "data/01_raw/new_logs/other.csv").write_text("user_id,item_id,timestamp\n")
    try:
        with retrain.retrain_lock(cycle / "data/03_primary/event_store/.retrain.lock"):
            result = kedro(cycle, "retrain", check=False)
    finally:
        (cycle / "data/01_raw/new_logs/other.csv").unlink()
    assert result.returncode != 0
    assert "another retrain is running" in output(result)


def _new_events(project, count: int) -> pd.DataFrame:
    """``count`` plausible new events, one day after the newest stored event."""
    events = pd.read_parquet(project / "data/03_primary/events.parquet")
    newest = int(events["timestamp"].max())
    sample = events.sample(count, random_state=0)[["user_id", "item_id", "rating"]]
    return sample.assign(timestamp=[newest + 86_400 + i for i in range(count)])[
        ["user_id", "item_id", "timestamp", "rating"]
    ]


def test_a_fatal_log_fails_the_retrain_and_changes_nothing(cycle):
    ledger = (cycle / LEDGER).read_text()
    before = registry_state(cycle)
    _new_events(cycle, 5).drop(columns="timestamp").to_csv(
        cycle / "data/01_raw/new_logs/no_time.csv", index=False
    )
    rejected = cycle / "data/08_reporting/quarantine/new_logs/rejected"
    try:
        result = kedro(cycle, "retrain", check=False)
        assert result.returncode != 0
        assert "no_time.csv: required column 'timestamp' is missing" in output(result)
        assert (cycle / LEDGER).read_text() == ledger and registry_state(cycle) == before
        # moved aside, so that the next retrain does not fail on it again
        assert not (cycle / "data/01_raw/new_logs/no_time.csv").exists()
        assert len(list(rejected.glob("no_time-*.csv"))) == 1
    finally:  # from wherever it is: the module's later tests share the drop
        (cycle / "data/01_raw/new_logs/no_time.csv").unlink(missing_ok=True)
        for path in rejected.glob("no_time-*"):
            path.unlink()


def test_bad_rows_of_a_new_log_are_quarantined_with_their_rule(cycle):
    log = _new_events(cycle, 150).astype(str)
    log.loc[len(log)] = [log["user_id"].iloc[0], "999999999", log["timestamp"].iloc[0], "5.0"]
    log.to_csv(cycle / "data/01_raw/new_logs/week.csv", index=False)
    kedro(cycle, "retrain")
    report = json.loads((cycle / "data/08_reporting/retrain/report.json").read_text())
    [entry] = report["files"]
    assert (entry["file"], entry["rows"], entry["accepted"], entry["quarantined"]) == (
        "week.csv",
        151,
        150,
        1,
    )
    [quarantine] = (cycle / "data/08_reporting/quarantine/new_logs").glob("week-*.csv")
    rows = pd.read_csv(quarantine)
    assert rows[["source_row", "source_line", "rules"]].values.tolist() == [
        [150, 152, "item_id.in_catalogue"]
    ]
    assert rows["source_file"].iloc[0].endswith("new_logs/week.csv")
    assert [e["file"] for e in json.loads((cycle / LEDGER).read_text())][-1] == "week.csv"
