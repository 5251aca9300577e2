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

# ``make test`` runs the suite on every core: pytest-xdist, ``-n auto --dist loadscope
# --no-loadscope-reorder`` (whole modules per worker, in the order sorted below).
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)  # one core per worker: two workers sharing cores stall each other

# modules whose tests use the session's ``full_run`` (tests/pipelines/recommender/conftest.py)
FULL_RUN_MODULES = (
    "tests/pipelines/recommender/test_full_pipeline.py",
    "tests/pipelines/recommender/test_mlops_cycle.py",
)


def _module(nodeid: str) -> str:
    """``tests/x/test_y.py`` of ``tests/x/test_y.py::test_z[param]``."""
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest end-to-end modules first, then the other end-to-end ones, then unit tests
    (a stable sort: each module keeps its order), so that parallel workers finish together."""
    for item in items:
        if "full_run" in item.fixturenames and _module(item.nodeid) not in FULL_RUN_MODULES:
            raise pytest.UsageError(
                f"{_module(item.nodeid)} uses full_run: add it to FULL_RUN_MODULES"
            )
    items.sort(
        key=lambda item: (
            "full_run" not in item.fixturenames,
            item.get_closest_marker("slow") is None,
        )
    )


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist hands out whole modules (``loadscope``), so a module-scoped fixture (a
    pipeline run in a copy of the project) is built once; the modules on ``full_run`` go to
    one worker together, so the session's ``full`` run is built once too. (The scheduler sees
    node ids only, hence the list. ``--dist loadgroup`` would read ``xdist_group`` marks, but
    pytest-xdist 3.8 groups by rewriting ``item._nodeid``, which pytest 9.2 no longer reads.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = _module(nodeid)
            return "full_run" if module in FULL_RUN_MODULES else module

    return Scheduling(config, log)


# What the suite must never write into the project it tests (the user's own MLflow store):
# new run or model folders under mlruns/, or MLflow's default ./mlflow.db.
def _project_store_entries() -> set[str]:
    entries = {"mlflow.db"} if (PROJECT / "mlflow.db").exists() else set()
    mlruns = PROJECT / "mlruns"
    for depth in ("*", "*/*", "*/*/*"):
        entries.update(str(p.relative_to(PROJECT)) for p in mlruns.glob(depth))
    return entries


def pytest_sessionstart(session) -> None:
    if not hasattr(session.config, "workerinput"):  # the controller, or a serial run
        session.config._project_store_before = _project_store_entries()


def pytest_sessionfinish(session, exitstatus) -> None:
    before = getattr(session.config, "_project_store_before", None)
    if before is None:
        return
    added = sorted(_project_store_entries() - before)
    if added:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = (
            f"the tests wrote {len(added)} entries into the project's MLflow store, e.g. "
            f"{added[:3]}: use the mlflow_store fixture (tests/conftest.py)"
        )
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(message, red=True)
        else:
            raise RuntimeError(message)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """An MLflow store of the test's own: SQLite and an experiment whose artifacts are under
    ``tmp_path`` (a logged model would otherwise land in ``./mlruns``, i.e. the project's own
    store). MLflow's tracking URI, ``MLFLOW_TRACKING_URI`` (which ``set_tracking_uri`` also
    sets, for subprocesses) and the active experiment are put back afterwards; restoring the
    *resolved* default instead would pin it, and the next MLflow call in the worker would
    create ``./mlflow.db``."""
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils

    previous_uri, previous_experiment = utils._tracking_uri, fluent._active_experiment_id
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # set_tracking_uri sets it too; this undoes it
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment(
        "test", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    mlflow.set_experiment(experiment_id=experiment)
    yield uri
    mlflow.set_tracking_uri(previous_uri)
    fluent._active_experiment_id = previous_experiment


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
