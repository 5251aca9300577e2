"""The stage runs hook: one nested MLflow run per stage, active while its nodes load and run."""

from __future__ import annotations

import mlflow
import pytest
from kedro.pipeline import node

from rere_pipeline.hooks import StageRunsHook


@pytest.fixture
def tracking(tmp_path):
    """A store and experiment of the test's own; MLflow's globals are put back afterwards."""
    from mlflow.tracking import fluent

    uri, experiment = mlflow.get_tracking_uri(), fluent._active_experiment_id
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("hooks")
    yield
    mlflow.set_tracking_uri(uri)
    fluent._active_experiment_id = experiment


def test_a_failed_input_load_fails_the_stage_run_an_earlier_node_opened(tracking):
    hook = StageRunsHook(stages=("evaluate",))
    first = node(lambda a: a, "a", "b", name="first", tags=["evaluate"])
    second = node(lambda b: b, "b", "c", name="second", tags=["evaluate"])
    with mlflow.start_run() as parent:
        hook.before_pipeline_run({}, None, None)
        hook.before_dataset_loaded("a", first)
        hook.before_node_run(first, None, {"a": 1}, False)
        stage = mlflow.active_run().info.run_id
        assert stage != parent.info.run_id
        mlflow.log_metric("seen", 1.0)
        hook.after_dataset_saved("b", 1, first)
        assert mlflow.active_run().info.run_id == parent.info.run_id  # closed after its output
        assert mlflow.get_run(stage).info.status == "FINISHED"
        assert mlflow.get_run(parent.info.run_id).data.metrics["seen"] == 1.0  # copied up

        # the second node's input fails to load: no node hook runs, the pipeline fails
        hook.before_dataset_loaded("b", second)
        assert mlflow.active_run().info.run_id == parent.info.run_id  # params go to the parent
        hook.on_pipeline_error(OSError("b is missing"), {}, None, None)
        assert mlflow.get_run(stage).info.status == "FAILED"
    # a failure inside a node (its inputs loaded) is left to kedro-mlflow: the stage is active
    with mlflow.start_run():
        hook.before_pipeline_run({}, None, None)
        hook.before_dataset_loaded("a", first)
        hook.before_node_run(first, None, {"a": 1}, False)
        inner = mlflow.active_run().info.run_id
        hook.on_pipeline_error(ValueError("in the node"), {}, None, None)
        assert mlflow.get_run(inner).info.status == "RUNNING"
        mlflow.end_run("FAILED")
