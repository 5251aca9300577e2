"""Run environments: what `--env=gpu` changes about where models live."""

from __future__ import annotations

from helpers import project_config

MODEL_DATASET = "rere_pipeline.datasets.HFModelDataset"


def test_the_gpu_environment_loads_every_model_onto_the_gpu():
    base, gpu = project_config("base")["catalog"], project_config("gpu")["catalog"]
    models = sorted(name for name, entry in base.items() if entry.get("type") == MODEL_DATASET)
    assert models == ["backbone", "rere_model", "sft_model"]
    for name in models:
        assert base[name].get("load_args", {}).get("device", "cpu") == "cpu", name
        assert gpu[name]["load_args"]["device"] == "cuda", name
        assert gpu[name]["path"] == base[name]["path"], name  # the same files
    assert project_config("gpu")["parameters"]["backbone"]["load_args"]["device"] == "cuda"
