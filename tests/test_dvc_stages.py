"""`dvc.yaml` lists what each stage's Kedro pipeline reads, so `dvc repro` reruns a stage
whenever its data, code or parameters change (and `dvc status` is not fooled)."""

from __future__ import annotations

import ast
import re
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


CATALOG_FILES = sorted((PROJECT / "conf" / "base").glob("catalog*.yml"))


def catalog_entry(name: str) -> tuple[Path, dict] | None:
    """The ``conf/base`` catalog file defining dataset ``name`` (an entry or a factory
    pattern such as ``quarantine_{name}``) and its entry; None for a memory dataset."""
    for file in CATALOG_FILES:
        for key, entry in (yaml.safe_load(file.read_text()) or {}).items():
            pattern = "^" + re.sub(r"\\\{[^}]*\\\}", ".+", re.escape(key)) + "$"
            if not key.startswith("_") and re.match(pattern, name):
                return file, entry
    return None


def dataset_path(catalog, name: str) -> str | None:
    """The file or folder a file dataset reads and writes (None: memory, MLflow metrics)."""
    described = catalog.get(name)._describe()
    path = described.get("filepath") or described.get("path")
    return str(path) if path else None


def declared(stage: dict) -> list[str]:
    """The paths a stage declares as its outputs: outs, metrics and plots."""
    return [
        entry if isinstance(entry, str) else next(iter(entry))
        for kind in ("outs", "metrics", "plots")
        for entry in stage.get(kind, [])
    ]


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
        # in the Kedro environment of conf/dvc_run.yml, a parameter of the stage (switching
        # it reruns the stage), and depending on that environment's folder
        assert stage["cmd"] == f"kedro run --pipelines={name} --env=${{kedro_env}}"
        assert {"conf/dvc_run.yml": ["kedro_env"]} in stage["params"], name
        assert "conf/${kedro_env}" in stage["deps"], name
    assert yaml.safe_load((PROJECT / "conf/dvc_run.yml").read_text()) == {"kedro_env": "local"}


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
        path = dataset_path(catalog, name)  # file datasets name their file or folder
        if not covered(str(path), deps):
            missing.append(f"{name} ({path})")
    assert not missing, f"dvc.yaml stage {stage} lacks {missing}"


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_declares_the_files_its_pipeline_writes(stage, pipelines, catalog):
    outs = declared(STAGE_FILE[stage])
    written = [
        (name, path)
        for name in sorted(pipelines[stage].all_outputs())
        if catalog_entry(name) and (path := dataset_path(catalog, name))
    ]
    assert written, stage
    missing = [f"{name} ({path})" for name, path in written if not covered(path, outs)]
    assert not missing, f"dvc.yaml stage {stage} does not declare {missing}"


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_depends_on_the_code_its_pipeline_runs(stage, pipelines):
    package = STAGES[stage].__name__.split(".")[-1]
    files = code_of(SRC / "rere_pipeline" / "pipelines" / package / "pipeline.py")
    # and the project's dataset classes that load and save its data, with the catalog
    # files that configure them
    for name in pipelines[stage].datasets():
        if found := catalog_entry(name):
            file, entry = found
            files.add(file)
            kind = entry.get("type", "")
            module = (
                module_file(kind.rsplit(".", 1)[0]) if kind.startswith("rere_pipeline.") else None
            )
            if module:
                files |= code_of(module)
    deps = STAGE_FILE[stage]["deps"]
    missing = sorted(
        str(f.relative_to(PROJECT)) for f in files if not covered(str(f.relative_to(PROJECT)), deps)
    )
    assert not missing, f"dvc.yaml stage {stage} lacks {missing}"
