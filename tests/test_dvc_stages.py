"""`dvc.yaml` lists what each stage's Kedro pipeline reads, so `dvc repro` reruns a stage
whenever its data, code or parameters change (and `dvc status` is not fooled)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from kedro.io import DataCatalog

from helpers import PROJECT, project_config
from rere_pipeline.pipeline_registry import STAGES, register_pipelines

SRC = PROJECT / "src"
STAGE_FILE = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]


def module_file(module: str) -> Path | None:
    """The file of a ``rere_pipeline`` module, or None (a name imported from a module)."""
    path = SRC.joinpath(*module.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def imported_modules(file: Path) -> set[Path]:
    """Files of the ``rere_pipeline`` modules ``file`` imports (absolute or relative)."""
    package = list(file.relative_to(SRC).parent.parts)
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names = [module, *(f"{module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {
            f for name in names if name.startswith("rere_pipeline") if (f := module_file(name))
        }
    return found


def code_of(pipeline_file: Path) -> set[Path]:
    """Every project file a pipeline runs: its module and what it imports, transitively,
    less package ``__init__`` files that hold only a docstring and the top package's (it sets
    environment defaults for every run, see there)."""
    seen, todo = set(), [pipeline_file]
    while todo:
        file = todo.pop()
        if file not in seen:
            seen.add(file)
            todo.extend(imported_modules(file))
    top = SRC / "rere_pipeline" / "__init__.py"
    return {
        f for f in seen - {top} if f.name != "__init__.py" or len(ast.parse(f.read_text()).body) > 1
    }


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.fixture(scope="module")
def pipelines():
    return register_pipelines()


@pytest.fixture(scope="module")
def catalog():
    return DataCatalog.from_config(project_config()["catalog"])


def test_every_stage_of_full_is_a_dvc_stage():
    assert list(STAGE_FILE) == list(STAGES)
    for name, stage in STAGE_FILE.items():
        assert stage["cmd"] == f"kedro run --pipelines={name}"


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_depends_on_the_data_and_parameters_its_pipeline_reads(stage, pipelines, catalog):
    deps = STAGE_FILE[stage]["deps"]
    params = {
        key
        for entry in STAGE_FILE[stage].get("params", [])
        for keys in entry.values()
        for key in keys
    }
    missing = []
    for name in sorted(pipelines[stage].inputs()):
        if name.startswith("params:"):  # covered by its own key or one above it
            key = name.removeprefix("params:")
            if not any(key == p or key.startswith(p + ".") for p in params):
                missing.append(f"params {key}")
            continue
        described = catalog.get(name)._describe()  # file datasets name their file or folder
        path = str(described.get("filepath") or described.get("path"))
        if not covered(path, deps):
            missing.append(f"{name} ({path})")
    assert not missing, f"dvc.yaml stage {stage} lacks {missing}"


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_depends_on_the_code_its_pipeline_runs(stage):
    package = STAGES[stage].__name__.split(".")[-1]
    files = code_of(SRC / "rere_pipeline" / "pipelines" / package / "pipeline.py")
    deps = STAGE_FILE[stage]["deps"]
    missing = sorted(
        str(f.relative_to(PROJECT)) for f in files if not covered(str(f.relative_to(PROJECT)), deps)
    )
    assert not missing, f"dvc.yaml stage {stage} lacks {missing}"
