"""`kedro run --pipelines=data` and `dvc repro data` end to end, in a temporary copy of the project."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from helpers import RAW, copy_project, mlflow_runs, run_cli

pytestmark = pytest.mark.slow

MODEL_INPUT = [
    "data/05_model_input/train.parquet",
    "data/05_model_input/valid.parquet",
    "data/05_model_input/test.parquet",
]
BAD_TEST_ROWS = {
    3: ("rating", "9.0", "rating.range"),
    7: ("item_id", "999999", "item_id.in_catalogue"),
}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rewrite_raw(project: Path, name: str, change) -> None:
    """Load a raw gzip CSV as text cells, change it, write it back compressed."""
    path = project / RAW / name
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame = change(frame)
    with gzip.open(path, "wt", newline="") as handle:
        frame.to_csv(handle, index=False)


@pytest.fixture(scope="module")
def data_run(tmp_path_factory) -> Path:
    """A copy of the project with two bad rows planted in test.csv, after `kedro run --pipelines=data`."""
    project = copy_project(tmp_path_factory.mktemp("data_run") / "project")

    def plant(frame: pd.DataFrame) -> pd.DataFrame:
        for row, (column, value, _) in BAD_TEST_ROWS.items():
            frame.loc[row, column] = value
        return frame

    _rewrite_raw(project, "test.csv.gz", plant)
    run_cli(["kedro", "run", "--pipelines=data", "--env=test"], cwd=project)
    return project


def test_data_run_writes_model_input_and_summary(data_run):
    for path in MODEL_INPUT:
        assert (data_run / path).exists(), path
    summary = json.loads((data_run / "data/08_reporting/data_summary.json").read_text())
    assert {"train_rows", "valid_rows", "test_rows", "items", "users", "cutoff"} <= set(summary)
    assert 9_000 <= summary["train_rows"] <= 11_000
    assert summary["valid_rows"] == 4532 and summary["test_rows"] == 4533 - len(BAD_TEST_ROWS)
    assert summary["items"] == 3686 and summary["cutoff"] == 1495152000
    assert summary["distinct_titles"] == 3646 and summary["largest_title_group"] == 27
    train = pd.read_parquet(data_run / MODEL_INPUT[0])
    assert len(train) == summary["train_rows"] and (train["timestamp"] < summary["cutoff"]).all()
    report = json.loads(
        (data_run / "data/08_reporting/validation/validation_report.json").read_text()
    )
    assert report["success"] is True and len(report["files"]) == 3
    docs = sorted(
        p.name for p in (data_run / "data/08_reporting/validation/data_docs").glob("*.html")
    )
    assert docs == sorted(
        f"{f}__{s}.html"
        for f in ("items_txt_gz", "valid_csv_gz", "test_csv_gz")
        for s in ("schema", "rows")
    )


def test_bad_rows_are_quarantined_with_rule_and_row(data_run):
    quarantine = pd.read_csv(data_run / "data/08_reporting/quarantine/test.csv")
    assert quarantine["source_row"].tolist() == sorted(BAD_TEST_ROWS)
    for row, (_, _, rule) in BAD_TEST_ROWS.items():
        entry = quarantine[quarantine["source_row"] == row].iloc[0]
        assert rule in entry["rules"] and entry["source_file"].endswith("test.csv.gz")
    assert pd.read_csv(data_run / "data/08_reporting/quarantine/valid.csv").empty


def test_data_run_is_one_mlflow_run_with_params_and_summary_metrics(data_run):
    runs = mlflow_runs(data_run)
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert len(parents) == 1
    run = parents.iloc[0]
    assert run["status"] == "FINISHED"
    # the stage's nested run holds the same metrics and the stage's artifacts
    children = runs[runs["tags.mlflow.parentRunId"] == run["run_id"]]
    assert len(children) == 1
    child = children.iloc[0]
    assert child["status"] == "FINISHED" and child["tags.stage"] == "data"
    assert child["metrics.data.train_rows"] == run["metrics.data.train_rows"]
    assert run["params.data.history_max"] == "10"
    assert run["params.data.validation.max_bad_fraction"] == "0.01"
    assert (
        run["metrics.data.train_rows"]
        == json.loads((data_run / "data/08_reporting/data_summary.json").read_text())["train_rows"]
    )
    artifacts = Path(child["artifact_uri"].removeprefix("file://"))
    assert (artifacts / "data_summary.json").exists()
    assert (artifacts / "validation" / "validation_report.json").exists()


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (
            lambda project: _rewrite_raw(
                project, "test.csv.gz", lambda f: f.drop(columns=["rating"])
            ),
            "data/01_raw/amazon-industrial/test.csv.gz: required column 'rating' is missing (rule: schema.required_column)",
        ),
        (
            lambda project: _rewrite_raw(
                project, "valid.csv.gz", lambda f: f.assign(timestamp="yesterday")
            ),
            "data/01_raw/amazon-industrial/valid.csv.gz: 4532 of 4532 rows (100.0%) break row rules, above the allowed 1.0%; most often column 'timestamp', rule timestamp.integer",
        ),
        (
            lambda project: (project / RAW / "items.txt.gz").write_bytes(
                b"\x1f\x8b\x08 this is not gzip"
            ),
            "data/01_raw/amazon-industrial/items.txt.gz: file is unreadable (rule: readable_csv)",
        ),
    ],
    ids=["missing-column", "too-many-bad-rows", "unreadable"],
)
def test_corrupted_raw_file_stops_the_run_and_keeps_earlier_outputs(
    data_run, tmp_path, corrupt, expected
):
    project = tmp_path / "project"
    shutil.copytree(data_run, project)
    before = {
        path: _digest(project / path)
        for path in [*MODEL_INPUT, "data/08_reporting/data_summary.json"]
    }
    corrupt(project)

    result = run_cli(["kedro", "run", "--pipelines=data", "--env=test"], cwd=project, check=False)

    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())  # undo rich's line wrapping
    assert expected in output
    assert {path: _digest(project / path) for path in before} == before, (
        "earlier outputs were touched"
    )
    runs = mlflow_runs(project)
    failed = runs[
        runs["start_time"] >= runs[runs["tags.mlflow.parentRunId"].isna()]["start_time"].max()
    ]
    assert set(failed["status"]) == {"FAILED"}  # the run, and its stage if a node had started
