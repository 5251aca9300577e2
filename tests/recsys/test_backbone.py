"""The offline backbone: built from a config, saved and reloaded as an ordinary HF directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from kedro.io import DatasetError

from rere_pipeline.atomic import replace_directory
from rere_pipeline.datasets import HFModelDataset
from rere_pipeline.pipelines.backbone.nodes import make_backbone
from rere_pipeline.recsys.backbone import Backbone


def test_saved_directory_is_a_plain_qwen2_checkpoint(tiny_backbone, tmp_path):
    HFModelDataset(path=str(tmp_path / "m")).save(tiny_backbone)
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files), (
        "weights must be safetensors"
    )
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    generation = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    assert generation.get("do_sample", False) is False


def test_reload_gives_the_same_tokens_and_logits(tiny_backbone, tmp_path):
    dataset = HFModelDataset(path=str(tmp_path / "m"))
    dataset.save(tiny_backbone)
    loaded = dataset.load()
    text = 'A user bought these items:\n"Hydrofarm HGPP400 Precision Pruner"'
    ids = tiny_backbone.tokenizer(text)["input_ids"]
    assert loaded.tokenizer(text)["input_ids"] == ids
    batch = torch.tensor([ids])
    with torch.no_grad():
        assert torch.allclose(
            loaded.model(batch).logits, tiny_backbone.model(batch).logits, atol=1e-5
        )
    assert (
        loaded.model.get_output_embeddings().weight.data_ptr()
        == loaded.model.get_input_embeddings().weight.data_ptr()
    )


def test_a_local_checkpoint_path_loads_through_the_same_code(
    tiny_backbone, small_catalogue, tmp_path
):
    HFModelDataset(path=str(tmp_path / "ckpt")).save(tiny_backbone)
    backbone = make_backbone(
        small_catalogue,
        {"name_or_path": str(tmp_path / "ckpt"), "load_args": {"trust_remote_code": False}},
        {},
    )
    assert isinstance(backbone, Backbone)
    assert backbone.model.config.hidden_size == tiny_backbone.model.config.hidden_size
    assert backbone.tokenizer.padding_side == "left"


def test_a_failed_save_leaves_the_previous_model(tiny_backbone, tmp_path, monkeypatch):
    dataset = HFModelDataset(path=str(tmp_path / "m"))
    dataset.save(tiny_backbone)
    before = (tmp_path / "m" / "model.safetensors").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tiny_backbone.model, "save_pretrained", broken)
    with pytest.raises(DatasetError, match="disk full"):
        dataset.save(tiny_backbone)
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before


def test_a_model_a_save_left_aside_between_its_two_renames_still_loads(tiny_backbone, tmp_path):
    dataset = HFModelDataset(path=str(tmp_path / "m"))
    dataset.save(tiny_backbone)
    (tmp_path / "m").rename(tmp_path / "m.previous")  # stopped before the new one moved in
    assert dataset.exists()  # so a run does not see it missing and retrain it
    loaded = dataset.load()
    assert loaded.model.config.hidden_size == tiny_backbone.model.config.hidden_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_save_stopped_between_its_two_renames_is_recovered_by_the_next(tmp_path):
    def writing(content: bytes, fail: bool = False):
        def write(staging: Path) -> None:
            staging.mkdir()
            (staging / "weights").write_bytes(content)
            if fail:
                raise OSError("disk full")

        return write

    model = tmp_path / "m"
    replace_directory(model, writing(b"v1"))
    model.rename(tmp_path / "m.previous")  # stopped after moving v1 aside, before v2 moved in
    with pytest.raises(OSError, match="disk full"):
        replace_directory(model, writing(b"v2", fail=True))
    assert (model / "weights").read_bytes() == b"v1"  # back in place, not deleted
    replace_directory(model, writing(b"v3"))
    assert (model / "weights").read_bytes() == b"v3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    (tmp_path / "m.previous").write_text("a file in the way")
    replace_directory(model, writing(b"v4"))
    assert (model / "weights").read_bytes() == b"v4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_missing_model_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match="config.json missing"):
        HFModelDataset(path=str(tmp_path / "nothing")).load()
