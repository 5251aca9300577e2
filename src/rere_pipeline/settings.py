"""Kedro project settings (https://docs.kedro.org/en/stable/configure/configuration_basics/).

MLflow tracking is wired by kedro-mlflow's hooks (auto-registered through its entry point) and
configured in ``conf/base/mlflow.yml``; ``StageRunsHook`` adds one nested run per stage, and
``InterruptHook`` makes Ctrl-C or SIGTERM fail the run like an error (MLflow runs FAILED).
"""

from kedro.config import OmegaConfigLoader

from rere_pipeline.hooks import InterruptHook, ParameterCheckHook, RuntimeHook, StageRunsHook

HOOKS = (RuntimeHook(), ParameterCheckHook(), StageRunsHook(), InterruptHook())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # conf/<env>/parameters*.yml override single nested keys of conf/base, not whole blocks
    "merge_strategy": {"parameters": "soft"},
}
