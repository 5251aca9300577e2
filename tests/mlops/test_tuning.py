"""Optuna helpers: the search space, pruning, and two workers sharing one SQLite study."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import optuna
import pytest
import torch

from rere_pipeline.mlops import tuning
from rere_pipeline.pipelines.tune.nodes import (
    remove_ended_trials_checkpoints,
    study_setup,
    trial_dir,
    tuned_rere_params,
)
from rere_pipeline.recsys.backbone import Backbone

SPACE = {
    "num_generations": [4, 8, 16],
    "beta": {"low": 1e-4, "high": 1e-1, "log": True},
    "rewards": {"rule": 1.0, "ranking": {"low": 0.0, "high": 2.0}},
}


def test_suggested_overrides_stay_in_the_search_space(tmp_path):
    study = tuning.open_study(f"sqlite:///{tmp_path}/s.db", "space", sampler_seed=0)
    for _ in range(5):
        trial = study.ask()
        overrides = tuning.suggest(trial, SPACE)
        assert overrides["num_generations"] in (4, 8, 16)
        assert 1e-4 <= overrides["beta"] <= 1e-1
        assert overrides["rewards"]["rule"] == 1.0 and 0.0 <= overrides["rewards"]["ranking"] <= 2.0
        study.tell(trial, overrides["beta"])
    best = tuning.best_overrides(study, SPACE)  # the largest beta won
    assert best["beta"] == max(t.params["beta"] for t in study.trials)
    assert best["rewards"]["rule"] == 1.0  # fixed weights are part of the best parameters


def test_a_trial_below_the_median_is_pruned(tmp_path):
    study = tuning.open_study(f"sqlite:///{tmp_path}/p.db", "prune", n_startup_trials=2)
    for value in (0.5, 0.6):  # two finished trials set the median at step 1
        trial = study.ask()
        trial.report(value, 1)
        study.tell(trial, value)
    report = tuning.pruning_reporter(study.ask())
    report(0, {"valid_ndcg_at_10": 0.01}, False)  # no finished trial reported step 0: go on
    with pytest.raises(optuna.TrialPruned):
        report(1, {"valid_ndcg_at_10": 0.1}, False)  # best so far 0.1 < median 0.55 at step 1


def test_the_starting_score_does_not_shield_a_falling_trial(tmp_path):
    study = tuning.open_study(f"sqlite:///{tmp_path}/s0.db", "start", n_startup_trials=2)
    for value in (0.5, 0.6):  # finished trials: the SFT model's 0.55 at step 0, then higher
        trial = study.ask()
        trial.report(0.55, 0)
        trial.report(value, 1)
        study.tell(trial, value)
    trial = study.ask()
    report = tuning.pruning_reporter(trial)
    report(0, {"valid_ndcg_at_10": 0.55}, False)  # the same starting model as every trial
    with pytest.raises(optuna.TrialPruned):  # the median pruner compares the best value so far
        report(1, {"valid_ndcg_at_10": 0.1}, False)
    assert study.trials[-1].intermediate_values == {1: 0.1}  # step 0 left out


def test_a_trial_at_its_final_step_is_scored_not_pruned(tmp_path):
    study = tuning.open_study(f"sqlite:///{tmp_path}/f.db", "final", n_startup_trials=2)
    for value in (0.5, 0.6):
        trial = study.ask()
        trial.report(value, 2)
        study.tell(trial, value)
    trial = study.ask()
    report = tuning.pruning_reporter(trial)
    report(2, {"valid_ndcg_at_10": 0.1}, True)  # below the median, but the budget is spent
    assert trial.should_prune()  # the pruner alone would have stopped it
    study.tell(trial, 0.1)
    assert study.trials[-1].state == optuna.trial.TrialState.COMPLETE
    intermediate = tuning.pruning_reporter(study.ask())  # the same score, budget not spent
    with pytest.raises(optuna.TrialPruned):
        intermediate(2, {"valid_ndcg_at_10": 0.1}, False)


def test_a_study_run_with_another_setup_is_not_joined(tmp_path):
    storage = f"sqlite:///{tmp_path}/not/yet/there/o.db"  # the folder is made
    setup = {"search_space": SPACE, "rere": {"max_steps": 100}, "sft_weights": "abc"}
    study = tuning.open_study(storage, "s", setup=setup)
    study.tell(study.ask(), 0.5)
    tuning.open_study(storage, "s", setup=setup)  # the same setup: joined
    tuning.open_study(storage, "s")  # no setup given: not checked
    semantic = {"low": 0, "high": 1}
    wider = {
        **setup,
        "search_space": {**SPACE, "rewards": {**SPACE["rewards"], "semantic": semantic}},
    }
    with pytest.raises(
        ValueError,
        match=r"1 trial\(s\) run with another setup \(search_space.rewards.semantic.high, "
        r"search_space.rewards.semantic.low differ\)",
    ):
        tuning.open_study(storage, "s", setup=wider)
    with pytest.raises(ValueError, match=r"\(rere.max_steps, sft_weights differ\)"):
        tuning.open_study(
            storage, "s", setup={**setup, "rere": {"max_steps": 20}, "sft_weights": "d"}
        )
    # a study whose trials were run before setups were recorded cannot be vouched for
    bare = tuning.open_study(storage, "old")
    bare.tell(bare.ask(), 0.1)
    with pytest.raises(ValueError, match="no setup recorded"):
        tuning.open_study(storage, "old", setup=setup)


def test_the_tuned_run_keeps_checkpoints_apart_from_the_rere_stages():
    rere = {"output_dir": "data/06_models/rere_checkpoints", "beta": 1e-3, "max_steps": 100}
    best = {"best_params": {"beta": 0.01, "num_generations": 8}}
    tuned = tuned_rere_params(rere, best)
    # the rere stage's checkpoints of an interrupted run are another run's to a tuned one:
    # sharing the folder, one would start afresh over (delete) the other's
    assert tuned == {
        "output_dir": "data/06_models/rere_checkpoints_tuned",
        "beta": 0.01,
        "num_generations": 8,
        "max_steps": 100,
    }


def test_the_setup_leaves_out_what_a_trial_replaces_or_runs_on():
    sft = Backbone(None, torch.nn.Linear(2, 2))
    params = {"search_space": SPACE, "budget": {"eval_steps": 25}}
    rere = {
        "num_generations": 16,  # replaced by the trial's suggestion, as beta and rewards
        "beta": 1e-3,
        "rewards": {"rule": 1.0, "ranking": 1.0},
        "max_steps": 100,
        "eval_steps": 50,
        "decode_batch_size": 32,  # speed only
        "output_dir": "data/06_models/rere_checkpoints",
    }
    setup = study_setup(sft, params, rere, {"max_history": 10})
    assert setup["rere"] == {"max_steps": 100, "eval_steps": 25}  # the budget over the stage's
    assert len(setup["sft_weights"]) == 64
    same = study_setup(
        sft, params, {**rere, "beta": 0.5, "decode_batch_size": 8}, {"max_history": 10}
    )
    assert same == setup
    assert study_setup(sft, params, {**rere, "max_steps": 20}, {"max_history": 10}) != setup


WORKER = textwrap.dedent(
    """
    import sys, time
    from rere_pipeline.mlops import tuning

    def objective(trial):
        overrides = tuning.suggest(trial, {"beta": {"low": 1e-4, "high": 1e-1, "log": True}})
        time.sleep(0.2)  # long enough for the two workers' trials to interleave
        return -abs(overrides["beta"] - 1e-2)

    study = tuning.open_study(sys.argv[1], "shared")
    tuning.run_trials(study, objective, n_trials=4)
    """
)


def test_two_workers_share_one_sqlite_study(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    tuning.open_study(storage, "shared")  # create it once, as the first worker would
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, storage], stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert len(trials) == 8
    assert sorted(t.number for t in trials) == list(range(8))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.params["beta"] for t in trials}) == 8


KILLED_WORKER = textwrap.dedent(
    """
    import os, signal, sys, time
    from rere_pipeline.mlops import tuning

    def objective(trial):
        tuning.suggest(trial, {"beta": {"low": 1e-4, "high": 1e-1, "log": True}})
        trial.set_user_attr(tuning.MLFLOW_RUN_ATTR, sys.argv[2])
        time.sleep(1.5)  # a heartbeat is on record
        os.kill(os.getpid(), signal.SIGKILL)  # no handler, no finally: as an OOM kill

    study = tuning.open_study(sys.argv[1], "killed", heartbeat_interval=1)
    tuning.run_trials(study, objective, n_trials=1)
    """
)


def test_a_killed_workers_trial_is_failed_with_its_run_and_retried_once(tmp_path, mlflow_store):
    import time

    import mlflow

    storage = f"sqlite:///{tmp_path}/optuna.db"
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name("test").experiment_id
    runs = [client.create_run(experiment).info.run_id for _ in range(2)]  # RUNNING

    def killed_worker(run_id: str) -> None:
        worker = subprocess.run(
            [sys.executable, "-c", KILLED_WORKER, storage, run_id],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert worker.returncode == -9, worker.stderr[-3000:]
        time.sleep(2.5)  # past the grace period: two heartbeat intervals

    def states(study) -> list[str]:
        return [t.state.name for t in study.trials]

    killed_worker(runs[0])
    study = optuna.load_study(study_name="killed", storage=storage)
    assert states(study) == ["RUNNING"]  # what a SIGKILLed trial stays without a heartbeat

    # the next worker fails trial 0 and its run, then runs its parameters again: killed too
    killed_worker(runs[1])
    assert states(study) == ["FAIL", "RUNNING"]
    assert client.get_run(runs[0]).info.status == "FAILED"
    first, retried = study.trials
    assert retried.params == first.params
    assert retried.system_attrs["retry_history"] == [0]

    # a retried trial killed again is failed but not queued a third time
    study = tuning.open_study(storage, "killed", heartbeat_interval=1, retry_killed=1)
    tuning.run_trials(study, lambda trial: tuning.suggest(trial, SPACE)["beta"], n_trials=1)
    assert states(study) == ["FAIL", "FAIL", "COMPLETE"]
    assert client.get_run(runs[1]).info.status == "FAILED"
    assert study.trials[2].params["beta"] != first.params["beta"]  # a new suggestion


def test_a_worker_with_another_heartbeat_interval_is_refused(tmp_path):
    """A worker fails trials silent for two of *its* intervals: one beating every 10 s would
    fail the live trials of one beating every 60 s."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    tuning.open_study(storage, "beats", heartbeat_interval=60)
    tuning.open_study(storage, "beats", heartbeat_interval=60)  # the same: joined
    with pytest.raises(ValueError, match="created with tune.heartbeat_interval 60, this worker"):
        tuning.open_study(storage, "beats", heartbeat_interval=10)


def test_a_new_worker_removes_the_checkpoints_ended_trials_left(tmp_path):
    """A killed trial never ran its clean-up; a running or queued trial keeps its folder."""
    study = tuning.open_study(f"sqlite:///{tmp_path}/optuna.db", "left")
    distribution = {"beta": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    for state in ("FAIL", "COMPLETE", "PRUNED"):
        study.add_trial(
            optuna.create_trial(
                state=optuna.trial.TrialState[state],
                params={"beta": 1e-2},
                distributions=distribution,
                value=0.1 if state == "COMPLETE" else None,
            )
        )
    study.enqueue_trial({"beta": 1e-3})
    assert study.ask().number == 3  # the queued trial, now RUNNING
    study.enqueue_trial({"beta": 1e-3})  # trial 4, WAITING
    output_dir = str(tmp_path / "rere_checkpoints")
    for number in range(5):
        (tmp_path / f"rere_checkpoints_trial{number}" / "checkpoint-2").mkdir(parents=True)
    remove_ended_trials_checkpoints(study, output_dir)
    left = sorted(p.name for p in tmp_path.glob("rere_checkpoints_trial*"))
    assert left == ["rere_checkpoints_trial3", "rere_checkpoints_trial4"]
    assert trial_dir(output_dir, 3) == str(tmp_path / "rere_checkpoints_trial3")
