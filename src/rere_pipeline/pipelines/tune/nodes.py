"""Nodes of the ``tune`` pipeline."""

from __future__ import annotations

import logging
import os
import shutil

import mlflow
import optuna
import pandas as pd
from sqlalchemy.engine import make_url

from rere_pipeline.mlops import tuning
from rere_pipeline.pipelines.rere.nodes import reinforce
from rere_pipeline.recsys.backbone import Backbone, weights_digest

log = logging.getLogger(__name__)

STORAGE_ENV = "RERE_OPTUNA_STORAGE"  # e.g. a PostgreSQL URL with a password: not in conf/


def tune_rere(
    sft_model: Backbone,
    backbone: Backbone,
    catalogue: pd.DataFrame,
    prompts_train: pd.DataFrame,
    train: pd.DataFrame,
    prompts_valid: pd.DataFrame,
    sasrec_model,
    params: dict,
    rere_params: dict,
    prompt_params: dict,
):
    """Add ``n_trials`` trials to the shared study; return its best parameters so far, every
    trial as a table, and the optimisation-history and importance plots.

    A trial is ReRe from the SFT model on ``budget`` (overrides of ``parameters_rere.yml``)
    with the suggested group size, beta and reward weights; its objective is valid NDCG@10
    of the final weights, and each periodic valid score feeds the median pruner. Each trial
    is a nested MLflow run.
    """
    storage = os.environ.get(STORAGE_ENV) or params["storage"]
    setup = study_setup(sft_model, params, rere_params, prompt_params)
    study = tuning.open_study(
        storage,
        params["study_name"],
        setup=setup,
        sampler_seed=params.get("sampler_seed"),
        n_startup_trials=int(params.get("n_startup_trials", 3)),
        pruner_warmup_steps=int(params.get("pruner_warmup_steps", 0)),
        heartbeat_interval=params.get("heartbeat_interval", 60),
        retry_killed=int(params.get("retry_killed", 1)),
    )
    log.info(
        "study %r in %s: %d trial(s) so far",
        params["study_name"],
        make_url(storage).render_as_string(hide_password=True),
        len(study.trials),
    )

    remove_ended_trials_checkpoints(study, rere_params["output_dir"])
    rows_cache: dict = {}  # trials with the same group size and budget share their rows

    def objective(trial: optuna.Trial) -> float:
        # a worker that created the study at the same moment may have recorded its setup
        tuning.check_setup(study, setup)
        overrides = tuning.suggest(trial, params["search_space"])
        output_dir = trial_dir(rere_params["output_dir"], trial.number)
        trial_params = {
            **trial_base(params, rere_params),
            **overrides,
            "output_dir": output_dir,
            "resume": False,
        }
        run = mlflow.start_run(
            run_name=f"trial-{trial.number}",
            nested=True,
            tags={"optuna.study": params["study_name"]},
        )
        trial.set_user_attr(tuning.MLFLOW_RUN_ATTR, run.info.run_id)  # failed if killed
        mlflow.log_params({"trial": trial.number, **trial.params})
        status = "FAILED"
        try:
            _, metrics, _ = reinforce(
                sft_model,
                backbone,
                catalogue,
                prompts_train,
                train,
                prompts_valid,
                sasrec_model,
                trial_params,
                prompt_params,
                on_score=tuning.pruning_reporter(trial),
                rows_cache=rows_cache,
            )
            for point in metrics["valid_ndcg_at_10"]:
                mlflow.log_metric("valid_ndcg_at_10", point["value"], step=point["step"])
            status = "FINISHED"
            return metrics["valid_ndcg_at_10"][-1]["value"]
        except optuna.TrialPruned:
            status = "KILLED"
            raise
        finally:
            mlflow.end_run(status=status)
            shutil.rmtree(output_dir, ignore_errors=True)

    tuning.run_trials(study, objective, int(params["n_trials"]), params.get("timeout"))
    best = study.best_trial
    summary = {
        "study_name": params["study_name"],
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": tuning.best_overrides(study, params["search_space"]),
        "trials": len(study.trials),
        "states": pd.Series([t.state.name for t in study.trials]).value_counts().to_dict(),
    }
    log.info("best trial %d: valid NDCG@10 %.4f with %s", best.number, best.value, best.params)
    history, importance = tuning.figures(study)
    trials = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration"))
    trials["duration"] = trials["duration"].dt.total_seconds()
    return (
        summary,
        trials,
        history,
        importance,
        {"tune.best_value": {"value": best.value, "step": 0}},
    )


# choices that do not change a trial's score: where and how it runs, what it logs
_NOT_SETUP = (
    "output_dir",
    "resume",
    "progress",
    "logging_steps",
    "save_steps",
    "device",
    "decode_batch_size",
    "loss_head",
    "gradient_checkpointing",
)


def trial_dir(output_dir: str, number: int) -> str:
    """Where trial ``number`` keeps its checkpoints (removed when the trial ends)."""
    return f"{output_dir}_trial{number}"


def remove_ended_trials_checkpoints(study: optuna.Study, output_dir: str) -> None:
    """Remove the checkpoint folders that ended trials left on this machine: a trial whose
    worker was killed never ran its clean-up. Running and queued trials keep theirs."""
    alive = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    for trial in study.get_trials(deepcopy=False):
        folder = trial_dir(output_dir, trial.number)
        if trial.state not in alive and os.path.isdir(folder):
            shutil.rmtree(folder)
            log.info("removed %s, left by trial %d (%s)", folder, trial.number, trial.state.name)


def trial_base(params: dict, rere_params: dict) -> dict:
    """A trial's ReRe parameters before its suggested values: the ReRe stage's, with
    ``tune.budget`` over them."""
    return {**rere_params, **(params.get("budget") or {})}


def study_setup(sft_model: Backbone, params: dict, rere_params: dict, prompt_params: dict) -> dict:
    """What a trial's score depends on besides its suggested values: the search space, the
    trial's other ReRe parameters (budget included), the prompts and the starting weights."""
    space = params["search_space"]
    return {
        "search_space": space,
        "rere": {
            k: v
            for k, v in trial_base(params, rere_params).items()
            if k not in _NOT_SETUP and k not in space  # the suggestion replaces it
        },
        "prompts": prompt_params,
        "sft_weights": weights_digest(sft_model.model),
    }


def tuned_rere_params(rere_params: dict, tuned: dict) -> dict:
    """``parameters_rere.yml`` with the study's best group size, beta and reward weights, and
    checkpoints of its own: a ``tune`` never starts afresh over (deletes) those of an
    interrupted ``rere`` run, nor the other way round."""
    return {
        **rere_params,
        **tuned["best_params"],
        "output_dir": f"{rere_params['output_dir']}_tuned",
    }
