"""The stage runs hook: one nested MLflow run per stage, active while its nodes load and run."""

from __future__ import annotations

import mlflow
import pytest
from kedro.pipeline import node

from rere_pipeline.hooks import StageRunsHook


@pytest.fixture
def tracking(tmp_path):
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield
    mlflow.set_tracking_uri(previous)


def test_a_stage_run_is_active_from_its_nodes_first_input_load(tracking):
    hook = StageRunsHook(stages=("evaluate",))
    first = node(lambda a: a, "a", "b", name="first", tags=["evaluate"])
    second = node(lambda b: b, "b", "c", name="second", tags=["evaluate"])
    with mlflow.start_run() as parent:
        hook.before_pipeline_run({}, None, None)
        hook.before_dataset_loaded("a", first)
        stage = mlflow.active_run().info.run_id
        assert stage != parent.info.run_id
        hook.before_node_run(first, None, {"a": 1}, False)
        assert mlflow.active_run().info.run_id == stage  # entered once per node
        mlflow.log_metric("seen", 1.0)
        hook.after_dataset_saved("b", 1, first)
        assert mlflow.active_run().info.run_id == parent.info.run_id  # closed after its output
        assert mlflow.get_run(stage).info.status == "FINISHED"
        assert mlflow.get_run(parent.info.run_id).data.metrics["seen"] == 1.0  # copied up

        # loading the second node's input fails: the stage's run is the active one, so
        # kedro-mlflow's error hook marks it FAILED with the parent, not only the parent
        hook.before_dataset_loaded("b", second)
        assert mlflow.active_run().info.run_id == stage
        mlflow.end_run("FAILED")
    assert mlflow.get_run(stage).info.status == "FAILED"
    runs = mlflow.search_runs(experiment_ids=[parent.info.experiment_id])
    assert len(runs) == 2  # the parent and one run for the stage, reopened
