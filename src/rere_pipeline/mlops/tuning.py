"""Optuna over ReRe's design choices: group size, KL beta and reward weights.

The study lives in an RDB (``tune.storage``: SQLite under ``data/`` by default, PostgreSQL
for several machines) and is opened with ``load_if_exists``, so any number of workers started
with the same storage and study name share it: each asks the study for its next trial.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)


SETUP_ATTR = "setup"  # the study's user attribute: what its trials' scores depend on
MLFLOW_RUN_ATTR = "mlflow_run_id"  # a trial's user attribute: its nested MLflow run
HEARTBEAT_ATTR = "heartbeat_interval"  # the study's: every worker's must be the same


def open_study(
    storage: str,
    study_name: str,
    *,
    setup: dict | None = None,
    sampler_seed: int | None = None,
    n_startup_trials: int = 3,
    pruner_warmup_steps: int = 0,
    heartbeat_interval: int | None = 60,
    retry_killed: int = 1,
) -> optuna.Study:
    """Create or join the study (TPE sampler, median pruner on intermediate valid NDCG@10).

    Workers sharing a study should not share a sampler seed (they would propose the same
    first trials), so the default is unseeded. ``setup`` (search space, trial parameters,
    starting model, ...) is recorded when the study is created; joining a study recorded with
    another setup is refused, since its trials' scores would not be comparable.

    A running trial records a heartbeat every ``heartbeat_interval`` seconds (None: none).
    A trial whose worker was killed (SIGKILL, out of memory, a lost machine) stops beating;
    the next trial any worker starts, two intervals later, marks it failed along with its
    MLflow run, and runs its parameters again up to ``retry_killed`` times
    (``on_killed_trial``). Without a heartbeat such a trial stays RUNNING for ever.
    """
    engine_kwargs = {}
    url = make_url(storage)
    if url.get_backend_name() == "sqlite":
        engine_kwargs = {"connect_args": {"timeout": 60}}
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(
            storage,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            heartbeat_stale_trial_callback=on_killed_trial(retry_killed),
        )
    study = optuna.create_study(
        storage=rdb,
        study_name=study_name,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=n_startup_trials),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=n_startup_trials, n_warmup_steps=pruner_warmup_steps
        ),
        load_if_exists=True,
    )
    if setup is not None:
        check_setup(study, setup)
    check_heartbeat(study, heartbeat_interval)
    return study


def check_heartbeat(study: optuna.Study, interval: int | None) -> None:
    """Record the study's heartbeat interval, or refuse a worker with another one: a worker
    waits two of its own intervals before it fails a silent trial, so one with a shorter
    interval would fail the live trials of one beating less often."""
    if HEARTBEAT_ATTR not in study.user_attrs:
        study.set_user_attr(HEARTBEAT_ATTR, interval)
        return
    recorded = study.user_attrs[HEARTBEAT_ATTR]
    if recorded != interval:
        raise ValueError(
            f"study {study.study_name!r} was created with tune.heartbeat_interval {recorded}, "
            f"this worker has {interval}: with another interval one worker would fail the "
            f"other's live trials (or never fail killed ones). Set it to {recorded}"
        )


def on_killed_trial(retry: int) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """What happens to a trial Optuna has just failed for its stale heartbeat: its MLflow run
    (the trial's ``mlflow_run_id``), left RUNNING by the killed worker, is marked FAILED, and
    its parameters are queued again unless they were already retried ``retry`` times."""
    with warnings.catch_warnings():  # optuna's heartbeat is experimental; we rely on it knowingly
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        again = (
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retry) if retry > 0 else None
        )

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        tried = len(trial.system_attrs.get("retry_history", [])) + 1
        log.warning(
            "trial %d stopped sending heartbeats (its worker was killed): marked failed; %s",
            trial.number,
            "its parameters are queued again"
            if again and tried <= retry
            else f"not retried (run {tried} time(s), tune.retry_killed is {retry})",
        )
        if again:
            again(study, trial)
        run_id = trial.user_attrs.get(MLFLOW_RUN_ATTR)
        if run_id:
            _fail_run(run_id)

    return callback


def _fail_run(run_id: str) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="FAILED")
    except (MlflowException, OSError) as exc:  # a worker logging to another tracking store
        log.warning("could not mark the killed trial's MLflow run %s failed: %s", run_id, exc)


def _flat(tree, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (JSON-normalised leaves)."""
    if isinstance(tree, dict) and tree:
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def check_setup(study: optuna.Study, setup: dict) -> None:
    """Record ``setup`` on a study without trials or setup; refuse one recorded otherwise,
    naming the keys that differ."""
    setup = json.loads(json.dumps(setup, sort_keys=True, default=str))
    known = study.user_attrs.get(SETUP_ATTR)
    if known is None and not study.trials:
        study.set_user_attr(SETUP_ATTR, setup)
        return
    if known == setup:
        return
    if known is None:
        changed = ["(no setup recorded with its trials)"]
    else:
        ours, theirs = _flat(setup), _flat(known)
        changed = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    raise ValueError(
        f"Optuna study {study.study_name!r} holds {len(study.trials)} trial(s) run with another "
        f"setup ({', '.join(changed)} differ): their scores are not comparable with this run's. "
        "Set tune.study_name to a new name, or delete the study from the storage"
    )


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """ReRe parameter overrides for one trial from ``tune.search_space``.

    ``num_generations``: a list of choices; ``beta``: ``{low, high, log}``; ``rewards``:
    ``{name: {low, high}}`` per reward function (a fixed number keeps that weight fixed).
    """
    overrides: dict = {}
    if "num_generations" in space:
        overrides["num_generations"] = int(
            trial.suggest_categorical("num_generations", list(space["num_generations"]))
        )
    if "beta" in space:
        spec = space["beta"]
        overrides["beta"] = trial.suggest_float(
            "beta", float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", True))
        )
    rewards = {}
    for name, spec in (space.get("rewards") or {}).items():
        rewards[name] = (
            trial.suggest_float(f"rewards.{name}", float(spec["low"]), float(spec["high"]))
            if isinstance(spec, dict)
            else float(spec)
        )
    if rewards:
        overrides["rewards"] = rewards
    return overrides


def best_overrides(study: optuna.Study, space: dict) -> dict:
    """The best trial's ReRe overrides, fixed reward weights included."""
    return suggest(optuna.trial.FixedTrial(study.best_trial.params), space)


def pruning_reporter(trial: optuna.Trial, metric: str = "valid_ndcg_at_10") -> Callable:
    """``on_score`` for ``train_rere``: report each valid score, stop the trial if pruned.

    Only an intermediate score can prune: at the ``last`` scoring the budget is spent, and the
    score is the trial's objective, which the study keeps even when it is below the median.
    Step 0 (the starting model, the same in every trial) is not reported: the median pruner
    compares a trial's *best* score so far, so it would shield a trial that falls below it.
    """

    def report(step: int, metrics: dict[str, float], last: bool) -> None:
        if step == 0 and not last:
            return
        trial.report(metrics[metric], step)
        if not last and trial.should_prune():
            log.info(
                "trial %d pruned at step %d (%s %.4f)", trial.number, step, metric, metrics[metric]
            )
            raise optuna.TrialPruned(f"pruned at step {step}")

    return report


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    n_trials: int,
    timeout: float | None = None,
) -> optuna.Study:
    """Add up to ``n_trials`` trials to the (possibly shared) study within ``timeout`` seconds."""
    study.optimize(
        objective,
        n_trials=n_trials,
        timeout=timeout,
        catch=(),
        gc_after_trial=True,
        show_progress_bar=False,
    )
    return study


def figures(study: optuna.Study):
    """Optimisation history and parameter importances (matplotlib figures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    history = vis.plot_optimization_history(study).figure
    history.set_size_inches(7, 4)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    try:
        importance = vis.plot_param_importances(study).figure
        importance.set_size_inches(7, 4)
    except (RuntimeError, ValueError) as exc:  # fewer than 2 completed trials, or no variance
        importance, ax = plt.subplots(figsize=(7, 4))
        ax.text(
            0.5,
            0.5,
            f"no importances from {len(completed)} completed trial(s):\n{exc}",
            ha="center",
            va="center",
            wrap=True,
        )
        ax.set_axis_off()
    for fig in (history, importance):
        fig.tight_layout()
    return history, importance
