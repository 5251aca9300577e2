"""Shared test fixtures. Tests run offline: no hub, no telemetry (set before any import)."""

from __future__ import annotations

import os

for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "KEDRO_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}.items():
    os.environ[_name] = _value

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from helpers import PROJECT, project_config  # noqa: E402

pytest_plugins = ["fixtures_models"]


@pytest.fixture(scope="session")
def raw_release() -> dict[str, pd.DataFrame]:
    """The raw seed files, loaded through the project's own catalog entries."""
    from kedro.io import DataCatalog

    conf = project_config()
    entries = {
        k: v for k, v in conf["catalog"].items() if k in ("raw_items", "raw_valid", "raw_test")
    }
    for entry in entries.values():
        entry["filepath"] = str(PROJECT / entry["filepath"])
    catalog = DataCatalog.from_config(entries)
    return {name.removeprefix("raw_"): catalog.load(name) for name in entries}
