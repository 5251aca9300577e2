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

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
RAW = "data/01_raw/amazon-industrial"

# What a copy of the project for an end-to-end run leaves out: environments, caches, stores
# and everything the pipelines produce (only the raw seed data travels).
_SKIP_TOP = {
    ".venv",
    ".git",
    "mlruns",
    "dvc-store",
    ".pytest_cache",
    ".ruff_cache",
    "build",
    "dist",
}


def copy_project(destination: Path) -> Path:
    """A clean copy of the project (code, conf, raw data, DVC config) at ``destination``."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        here = Path(folder)
        skipped = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        if here == PROJECT:
            skipped |= _SKIP_TOP & set(names)
        if here == PROJECT / ".dvc":
            skipped |= {"cache", "tmp"} & set(names)
        if here.parent == PROJECT / "data" and here.name != "01_raw":
            skipped |= {n for n in names if n != ".gitkeep"}
        return skipped

    shutil.copytree(PROJECT, destination, ignore=ignore)
    (destination / "mlruns").mkdir(exist_ok=True)
    return destination


def run_cli(
    args: list[str], cwd: Path, check: bool = True, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run a console script of this environment (kedro, dvc, git) in ``cwd``."""
    bindir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "COLUMNS": "200",
    }
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


@pytest.fixture(scope="session")
def raw_release() -> dict[str, pd.DataFrame]:
    """The raw seed files, loaded through the project's own catalog entries."""
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog

    conf = OmegaConfigLoader(str(PROJECT / "conf"), base_env="base", default_run_env="base")
    entries = {
        k: v for k, v in conf["catalog"].items() if k in ("raw_items", "raw_valid", "raw_test")
    }
    for entry in entries.values():
        entry["filepath"] = str(PROJECT / entry["filepath"])
    catalog = DataCatalog.from_config(entries)
    return {name.removeprefix("raw_"): catalog.load(name) for name in entries}
