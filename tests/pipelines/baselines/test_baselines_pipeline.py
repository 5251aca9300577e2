"""`kedro run --pipelines=baselines --env=test` end to end, in a temporary copy of the project."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from helpers import cli_env, copy_project, latest_kedro_run, mlflow_runs, run_cli

pytestmark = pytest.mark.slow

KS = (1, 3, 5, 10, 20)


@pytest.fixture(scope="module")
def baselines_run(tmp_path_factory) -> Path:
    """A copy of the project after the `data` and then the `baselines` pipeline (test profile)."""
    project = copy_project(tmp_path_factory.mktemp("baselines_run") / "project")
    run_cli(["kedro", "run", "--pipelines=data", "--env=test"], cwd=project)
    # One torch thread: the suite may share a small machine with other work.
    run_cli(
        [
            "kedro",
            "run",
            "--pipelines=baselines",
            "--env=test",
            "--params=runtime.torch_threads=1",
        ],
        cwd=project,
    )
    return project


def test_evaluation_has_every_k_for_both_scorings_and_splits(baselines_run):
    evaluation = json.loads(
        (baselines_run / "data/07_model_output/sasrec_evaluation.json").read_text()
    )
    assert set(evaluation) == {"sasrec", "sasrec_by_id"}
    for scoring in evaluation.values():
        assert set(scoring) == {"test", "valid"}
        for split, entry in scoring.items():
            assert entry["split"] == split and entry["valid_fraction"] == 1.0
            assert entry["beam_width"] is None
            for k in KS:
                assert 0.0 <= entry[f"HR@{k}"] <= 1.0 and 0.0 <= entry[f"NDCG@{k}"] <= 1.0
                assert entry[f"NDCG@{k}"] <= entry[f"HR@{k}"]
    # the rows every model is reported on: conf/test's evaluate.max_rows
    assert evaluation["sasrec"]["test"]["rows"] == 24
    assert evaluation["sasrec"]["valid"]["rows"] == 24


def test_model_predictions_and_plot_are_written(baselines_run):
    model_dir = baselines_run / "data/06_models/sasrec"
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((model_dir / "config.json").read_text())["hidden"] == 16  # conf/test
    predictions = pd.read_parquet(baselines_run / "data/07_model_output/sasrec_predictions.parquet")
    assert predictions["split"].value_counts().to_dict() == {"test": 24, "valid": 24}
    assert {"row", "user_id", "item_id", "ranked_item_ids", "ranked_titles"} <= set(predictions)
    for split, rows in predictions.groupby("split"):
        inputs = pd.read_parquet(baselines_run / f"data/05_model_input/{split}.parquet")
        assert (inputs["user_id"].to_numpy()[rows["row"]] == rows["user_id"]).all()
        assert (inputs["item_id"].to_numpy()[rows["row"]] == rows["item_id"]).all()
    assert all(len(r) == 20 for r in predictions["ranked_item_ids"])
    assert all(len(set(t)) == 20 for t in predictions["ranked_titles"])
    assert (baselines_run / "data/08_reporting/sasrec_training.png").stat().st_size > 0


def test_metrics_are_logged_to_mlflow(baselines_run):
    run = latest_kedro_run(baselines_run)
    assert run["status"] == "FINISHED"
    assert 0.0 <= run["metrics.eval.sasrec.test.NDCG_at_10"] <= 1.0
    assert 0.0 <= run["metrics.eval.sasrec_by_id.valid.HR_at_20"] <= 1.0
    assert run["metrics.sasrec.training.epochs_run"] == 1
    assert run["params.baselines.sasrec.model.hidden"] == "16"


def test_parameters_that_would_cap_a_metric_stop_the_run_before_it_starts(baselines_run):
    written = baselines_run / "data/07_model_output/sasrec_evaluation.json"
    before = written.stat().st_mtime_ns
    result = run_cli(
        ["kedro", "run", "--pipelines=baselines", "--env=test", "--params=evaluate.beam_width=5"],
        cwd=baselines_run,
        check=False,
    )
    assert result.returncode != 0
    assert "evaluate.ks: K = 10 is above the beam width 5" in result.stdout + result.stderr
    assert written.stat().st_mtime_ns == before  # nothing ran


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_fails_its_mlflow_runs_and_keeps_earlier_outputs(
    baselines_run, tmp_path, number
):
    """Without ``InterruptHook`` Ctrl-C left the stage's MLflow run FINISHED and the parent
    RUNNING, and SIGTERM left both RUNNING."""
    project = tmp_path / "project"
    shutil.copytree(baselines_run, project)
    model = project / "data/06_models/sasrec/model.safetensors"
    before = model.read_bytes()
    log = tmp_path / "run.log"
    params = (
        "runtime.torch_threads=1,"  # SASRec below trains until it is stopped
        "baselines.sasrec.train.max_epochs=100000,baselines.sasrec.train.patience=100000"
    )
    # SIGINT as a terminal's Ctrl-C delivers it: a child started while the suite ignores it
    # (a background job) would inherit it ignored; a handler is reset to the default by exec
    run = None
    suite_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with log.open("w") as out:
            run = subprocess.Popen(
                ["kedro", "run", "--pipelines=data,baselines", "--env=test", f"--params={params}"],
                cwd=project,
                env=cli_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        signal.signal(signal.SIGINT, suite_handler)
        deadline = time.monotonic() + 300
        while "Running node: train_sasrec" not in log.read_text():
            assert run.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(1)
        run.send_signal(number)
        returncode = run.wait(timeout=120)
    finally:
        signal.signal(signal.SIGINT, suite_handler)
        if run is not None and run.poll() is None:  # never leave an endless training behind
            run.kill()
            run.wait()

    output = " ".join(log.read_text().split())  # undo rich's line wrapping
    assert returncode == 1, output[-3000:]  # an error exit, not a death by the signal
    assert f"{signal.Signals(number).name} received: stopping the run" in output
    assert '--from-nodes "train_sasrec"' in output  # Kedro's resume hint
    runs = mlflow_runs(project)
    this_run = runs[runs["start_time"] >= latest_kedro_run(project)["start_time"]]
    stages = this_run[this_run["tags.mlflow.parentRunId"].notna()]
    assert set(this_run["status"]) == {"FAILED", "FINISHED"}
    assert set(stages[stages["status"] == "FAILED"]["tags.stage"]) == {"baselines"}
    assert set(stages[stages["status"] == "FINISHED"]["tags.stage"]) == {"data"}
    assert this_run[this_run["tags.mlflow.parentRunId"].isna()]["status"].item() == "FAILED"
    assert model.read_bytes() == before
