"""One `kedro run --pipelines=full --env=test` in a temporary copy, shared by this folder."""

from __future__ import annotations

import pytest

from helpers import copy_project, run_cli


@pytest.fixture(scope="session")
def full_run(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("full") / "project")
    result = run_cli(["kedro", "run", "--pipelines=full", "--env=test"], cwd=project)
    return project, result
