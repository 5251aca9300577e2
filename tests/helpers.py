"""Helpers shared by the tests: the project root, a clean copy of it, running its CLIs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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


def project_config(env: str = "base"):
    """The project's configuration for ``env``, merged as ``kedro run --env`` merges it."""
    from kedro.config import OmegaConfigLoader

    from rere_pipeline.settings import CONFIG_LOADER_ARGS

    return OmegaConfigLoader(
        str(PROJECT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": env}
    )


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
    args: list[str],
    cwd: Path,
    check: bool = True,
    timeout: int = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run a console script of this environment (kedro, dvc, git) in ``cwd`` (``env``: extra
    environment variables)."""
    result = subprocess.run(
        args, cwd=cwd, env=cli_env(env), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``run_cli`` runs a console script in: this one, its ``bin`` first on
    the PATH, wide lines (rich wraps at the terminal width), plus ``extra``."""
    bindir = Path(sys.executable).parent
    return {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "COLUMNS": "200",
        **(extra or {}),
    }


def mlflow_runs(project: Path):
    """Every MLflow run of the project's store, newest first (a DataFrame)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    return mlflow.search_runs(search_all_experiments=True, order_by=["start_time DESC"])


def latest_kedro_run(project: Path):
    """The newest top-level run (one per ``kedro run``; its stages are nested runs)."""
    runs = mlflow_runs(project)
    return runs[runs["tags.mlflow.parentRunId"].isna()].iloc[0]
