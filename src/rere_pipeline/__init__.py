"""rere-pipeline: ReRe-style generative recommendation and the MLOps loop around it."""

import os

__version__ = "0.1.0"

# Privacy and offline defaults, applied as soon as the package is imported (by `kedro`,
# the tests or a notebook). Each is a default only: an explicit environment value wins.
for _name, _value in {
    "KEDRO_DISABLE_TELEMETRY": "true",  # kedro-telemetry (also `.telemetry`: consent false)
    "DO_NOT_TRACK": "1",  # honoured by kedro-telemetry and MLflow
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",  # Great Expectations usage statistics
    "HF_HUB_OFFLINE": "1",  # never reach a model hub at run time
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)
