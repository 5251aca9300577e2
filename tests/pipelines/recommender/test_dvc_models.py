"""`dvc repro` of the stages up to `sft` on the test profile; the model-input datasets and a
LoRA adapter through the remote and back."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from helpers import copy_project, run_cli

pytestmark = pytest.mark.slow
ADAPTER = "data/06_models/sft_adapter"
MODEL_INPUT = [
    f"data/05_model_input/{name}.parquet"
    for name in ("train", "valid", "test", "prompts_train", "prompts_valid", "prompts_test")
]


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digests(folder):
    return {p.name: _sha256(p) for p in sorted(folder.iterdir())}


def test_dvc_versions_a_lora_adapter_and_round_trips_it(tmp_path):
    project = copy_project(tmp_path / "project")
    (project / "conf/test/parameters_lora.yml").write_text(
        "sft:\n  lora:\n    enabled: true\n    r: 4\n    alpha: 8\n"
    )
    run_cli(["git", "init", "-q"], cwd=project)
    remote = tmp_path / "remote"
    run_cli(["dvc", "remote", "add", "--local", "-f", "-d", "scratch", str(remote)], cwd=project)
    run_environment = project / "conf/dvc_run.yml"
    run_environment.write_text("kedro_env: test\n")  # every stage on the tiny test profile

    run_cli(["dvc", "repro", "sft"], cwd=project)
    adapter = project / ADAPTER
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(_digests(adapter))
    first = _digests(adapter)

    # only what changed is rebuilt: a new SFT parameter reruns sft, nothing upstream
    params = project / "conf/base/parameters_sft.yml"
    params.write_text(params.read_text().replace("weight_decay: 0.0", "weight_decay: 0.01"))
    out = run_cli(["dvc", "repro", "sft"], cwd=project).stdout
    for stage in ("data", "backbone", "prompts"):
        assert f"Stage '{stage}' didn't change, skipping" in out
    assert "Running stage 'sft'" in out
    before = _digests(adapter)
    assert before["adapter_model.safetensors"] != first["adapter_model.safetensors"]  # retrained

    inputs = {path: _sha256(project / path) for path in MODEL_INPUT}
    run_cli(["dvc", "push", "--with-deps", "sft"], cwd=project)
    shutil.rmtree(adapter)
    for path in MODEL_INPUT:
        (project / path).unlink()
    shutil.rmtree(project / ".dvc" / "cache")
    run_cli(["dvc", "pull", "--with-deps", "sft"], cwd=project)
    assert _digests(adapter) == before
    assert {path: _sha256(project / path) for path in MODEL_INPUT} == inputs

    # the pulled adapter on the backbone reproduces the merged SFT weights
    from peft import PeftModel

    from rere_pipeline.recsys.backbone import load_backbone

    base = load_backbone(project / "data/06_models/backbone").model
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    sft = load_backbone(project / "data/06_models/sft").model.state_dict()
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(value, sft[key])

    # back to the default profile: every stage is out of date (its test-profile outputs are
    # not taken for the default's), through the kedro_env parameter
    run_environment.write_text("kedro_env: local\n")
    status = run_cli(["dvc", "status", "sft", "--with-deps"], cwd=project).stdout
    for stage in ("data", "backbone", "prompts", "sft"):
        assert f"{stage}:" in status, status
    assert "kedro_env" in status, status
