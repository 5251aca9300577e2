"""Kedro project settings (https://docs.kedro.org/en/stable/configure/configuration_basics/).

MLflow tracking is wired by kedro-mlflow's hooks (auto-registered through its entry point) and
configured in ``conf/base/mlflow.yml``; nothing here needs to change for it.
"""

from kedro.config import OmegaConfigLoader

from rere_pipeline.hooks import RuntimeHook

HOOKS = (RuntimeHook(),)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # conf/<env>/parameters*.yml override single nested keys of conf/base, not whole blocks
    "merge_strategy": {"parameters": "soft"},
}
