"""The stage runs hook: one nested MLflow run per stage, active while its nodes load and run."""

from __future__ import annotations

import os
import signal
import threading
import time

import mlflow
import pytest
from kedro.pipeline import node

from rere_pipeline.hooks import (
    InterruptHook,
    ParameterCheckHook,
    RunInterrupted,
    StageRunsHook,
)


def test_a_failed_input_load_fails_the_stage_run_an_earlier_node_opened(mlflow_store):
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
    # a failure inside a node (its inputs loaded): its stage fails and the parent is active
    # again, for kedro-mlflow to fail, or for an orchestrator that opened it before `kedro run`
    # (kedro-mlflow leaves such a run, and used to leave the stage, open and active)
    with mlflow.start_run() as parent:
        hook.before_pipeline_run({}, None, None)
        hook.before_dataset_loaded("a", first)
        hook.before_node_run(first, None, {"a": 1}, False)
        inner = mlflow.active_run().info.run_id
        hook.on_pipeline_error(ValueError("in the node"), {}, None, None)
        assert mlflow.get_run(inner).info.status == "FAILED"
        assert mlflow.active_run().info.run_id == parent.info.run_id


def test_a_stage_closed_again_does_not_put_back_a_replaced_parent_metric(mlflow_store):
    hook = StageRunsHook(stages=("evaluate", "rere"))
    score_sft = node(lambda a: a, "a", "b", name="score_sft", tags=["evaluate"])
    train = node(lambda b: b, "b", "c", name="train", tags=["rere"])
    score_rere = node(lambda c: c, "c", "d", name="score_rere", tags=["evaluate"])
    with mlflow.start_run() as parent:
        hook.before_pipeline_run({}, None, None)
        for done, output, value in (
            (score_sft, "b", 1.0),
            (train, "c", 2.0),
            (score_rere, "d", None),
        ):
            hook.before_node_run(done, None, {}, False)
            if value is not None:
                mlflow.log_metric("m", value)
            hook.after_dataset_saved(output, 1, done)
        # evaluate closed again with its own m (1.0) unchanged: rere's 2.0 stays the latest
        assert mlflow.get_run(parent.info.run_id).data.metrics["m"] == 2.0


@pytest.fixture
def default_signals():
    """SIGINT and SIGTERM as a plain terminal process has them; put back afterwards."""
    saved = {n: signal.getsignal(n) for n in InterruptHook.SIGNALS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


@pytest.mark.parametrize("number", InterruptHook.SIGNALS, ids=["sigint", "sigterm"])
def test_the_first_signal_of_a_run_is_an_error_and_the_second_acts_as_usual(
    default_signals, number
):
    usual = signal.getsignal(number)
    hook = InterruptHook()
    hook.before_pipeline_run()
    assert signal.getsignal(number) != usual
    with pytest.raises(RunInterrupted, match=signal.Signals(number).name):
        os.kill(os.getpid(), number)
        time.sleep(5)  # the handler runs before this ends
    assert signal.getsignal(number) == usual  # a second one would stop at once

    hook.before_pipeline_run()
    hook.after_pipeline_run()  # a run that ends normally puts the handlers back too
    assert [signal.getsignal(n) for n in InterruptHook.SIGNALS] == [
        signal.default_int_handler,
        signal.SIG_DFL,
    ]


def test_a_signal_the_parent_ignores_stays_ignored(default_signals):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job's Ctrl-C
    hook = InterruptHook()
    hook.before_pipeline_run()
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
    hook.on_pipeline_error()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_an_interrupt_a_library_swallowed_still_stops_the_run_at_the_next_node(default_signals):
    hook = InterruptHook()
    hook.before_pipeline_run()
    try:  # a library's broad ``except Exception`` around the code the signal interrupted
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    except Exception:
        pass
    with pytest.raises(RunInterrupted, match="SIGTERM"):
        hook.after_node_run()
    with pytest.raises(RunInterrupted):
        hook.before_node_run()
    hook.on_pipeline_error()
    hook.before_pipeline_run()  # the next run starts clean
    hook.before_node_run()
    hook.after_pipeline_run()


def test_a_run_off_the_main_thread_leaves_the_handlers_alone(default_signals):
    hook, errors = InterruptHook(), []

    def run() -> None:
        try:
            hook.before_pipeline_run()
            hook.before_node_run()
            hook.on_pipeline_error()
        except Exception as exc:  # e.g. signal.signal's ValueError off the main thread
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert errors == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_handler_someone_set_during_the_run_is_not_overwritten(default_signals):
    hook = InterruptHook()
    hook.before_pipeline_run()
    theirs = lambda number, frame: None  # noqa: E731
    signal.signal(signal.SIGTERM, theirs)
    hook.after_pipeline_run()
    assert signal.getsignal(signal.SIGTERM) is theirs
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler


def test_a_failed_run_fails_a_stage_closed_between_its_nodes_but_not_a_finished_one(mlflow_store):
    from kedro.pipeline import Pipeline

    hook = StageRunsHook(stages=("data", "rere", "evaluate"))
    prepare = node(lambda a: a, "a", "b", name="prepare", tags=["data"])
    score_sft = node(lambda b: b, "b", "sft_score", name="score_sft", tags=["evaluate"])
    train = node(lambda b: b, "b", "model", name="train", tags=["rere"])
    score_rere = node(lambda m: m, "model", "rere_score", name="score_rere", tags=["evaluate"])
    stages = {}
    with mlflow.start_run():
        hook.before_pipeline_run({}, Pipeline([prepare, score_sft, train, score_rere]), None)
        for done, output in ((prepare, "b"), (score_sft, "sft_score")):
            hook.before_node_run(done, None, {}, False)
            stages[next(iter(done.tags))] = mlflow.active_run().info.run_id
            hook.after_dataset_saved(output, 1, done)
        hook.before_node_run(train, None, {}, False)  # stopped while training
        running = mlflow.active_run().info.run_id
        hook.on_pipeline_error(KeyboardInterrupt(), {}, None, None)
        assert mlflow.get_run(stages["evaluate"]).info.status == "FAILED"  # scored SFT only
        assert mlflow.get_run(stages["data"]).info.status == "FINISHED"
        assert mlflow.get_run(running).info.status == "FAILED"


def test_the_valid_samples_are_checked_against_the_split_its_first_node_loads():
    from types import SimpleNamespace

    import pandas as pd

    params = {
        "evaluate": {"ks": [10], "beam_width": 20, "max_rows": {"valid": 30}},
        "sft": {"valid_rows": 20},
    }
    hook = ParameterCheckHook()
    hook.after_context_created(SimpleNamespace(params=params))
    hook.before_node_run(None, {"backbone": object()})  # no valid split: nothing to check
    with pytest.raises(ValueError, match="the valid split has 40 rows, fewer than"):
        hook.before_node_run(None, {"valid": pd.DataFrame({"user_id": range(40)})})
    hook.after_context_created(SimpleNamespace(params=params))  # the next session
    hook.before_node_run(None, {"prompts_valid": pd.DataFrame({"user_id": range(50)})})
    hook.before_node_run(None, {"valid": pd.DataFrame({"user_id": range(40)})})  # checked once
