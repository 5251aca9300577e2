"""SASRec: shapes, learning a synthetic sequential pattern, save/load, collaborative score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rere_pipeline.recsys import sasrec

NUM_ITEMS = 20


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pattern_rows(n: int, seed: int) -> pd.DataFrame:
    """Histories walking ``i -> i + 1 (mod NUM_ITEMS)``; the target is the next step."""
    rng = np.random.default_rng(seed)
    histories, targets = [], []
    for _ in range(n):
        start, length = int(rng.integers(NUM_ITEMS)), int(rng.integers(1, 8))
        walk = [(start + i) % NUM_ITEMS for i in range(length + 1)]
        histories.append(walk[:-1])
        targets.append(walk[-1])
    return pd.DataFrame({"history_item_id": histories, "item_id": targets})


@pytest.fixture(scope="module")
def trained() -> tuple[sasrec.SASRec, list[dict]]:
    torch.set_num_threads(1)
    config = sasrec.SASRecConfig(num_items=NUM_ITEMS, max_len=5, hidden=16, layers=1, dropout=0.0)
    params = {"lr": 0.01, "batch_size": 32, "max_epochs": 15, "patience": 15, "seed": 0}
    return sasrec.train_sasrec(
        _pattern_rows(400, 0), _pattern_rows(50, 1), config, params, progress=False
    )


def test_shapes_and_padding():
    model = sasrec.SASRec(sasrec.SASRecConfig(num_items=7, max_len=4, hidden=8, heads=2))
    seq = sasrec.pad_histories([[3], [0, 1, 2, 3, 4, 5]], max_len=4)
    assert seq.tolist() == [[0, 0, 0, 4], [3, 4, 5, 6]]  # left-padded, ids + 1, last 4 kept
    assert model(seq).shape == (2, 4, 7)
    assert model.score([[3], [0, 1, 2, 3, 4, 5], []]).shape == (3, 7)
    assert torch.isfinite(model.score([[]])).all()


def test_training_targets_per_position():
    rows = pd.DataFrame({"history_item_id": [[4, 5]], "item_id": [6]})
    inputs, labels = sasrec.training_tensors(rows, max_len=3, per_position=True)
    assert inputs.tolist() == [[0, 5, 6]] and labels.tolist() == [[-100, 5, 6]]
    _, last_only = sasrec.training_tensors(rows, max_len=3, per_position=False)
    assert last_only.tolist() == [[-100, -100, 6]]


def test_training_lowers_loss_and_learns_the_pattern(trained):
    model, history = trained
    assert [r["epoch"] for r in history] == list(range(1, len(history) + 1))
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 2
    assert {"train_loss", "valid_ndcg@10", "valid_hr@10"} <= set(history[0])
    rows = _pattern_rows(100, 2)
    top = sasrec.rank(model, rows, k=3)
    assert all(len(r) == 3 for r in top)
    accuracy = np.mean([r[0] == t for r, t in zip(top, rows["item_id"], strict=True)])
    assert accuracy > 0.9


def test_rank_can_exclude_history(trained):
    model, _ = trained
    histories = [[1, 2, 3]]
    ranked = sasrec.rank(model, histories, k=NUM_ITEMS, exclude_history=True)[0]
    assert len(ranked) == NUM_ITEMS and set(ranked[: NUM_ITEMS - 3]).isdisjoint({1, 2, 3})
    assert ranked[0] == 4


def test_save_load_round_trip_gives_identical_scores(trained, tmp_path):
    model, _ = trained
    sasrec.save_sasrec(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = sasrec.load_sasrec(tmp_path / "m")
    histories = [[0, 1], [5], [9, 10, 11, 12, 13, 14, 15]]
    assert loaded.config == model.config
    assert torch.equal(loaded.score(histories), model.score(histories))


def test_a_failed_save_leaves_the_previous_model(trained, tmp_path, monkeypatch):
    from kedro.io import DatasetError

    from rere_pipeline.datasets_torch import SASRecDataset

    model, _ = trained
    dataset = SASRecDataset(path=str(tmp_path / "sasrec"))
    dataset.save(model)
    before = {f.name: f.read_bytes() for f in (tmp_path / "sasrec").iterdir()}

    def broken(state, path):  # the weights are written, then the disk fills up
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(sasrec, "save_file", broken)
    with pytest.raises(DatasetError, match="disk full"):
        dataset.save(model)
    assert {f.name: f.read_bytes() for f in (tmp_path / "sasrec").iterdir()} == before
    assert dataset.load().config == model.config
    (tmp_path / "sasrec").rename(tmp_path / "sasrec.previous")  # a save stopped mid-swap
    assert dataset.exists() and dataset.load().config == model.config


def test_training_is_seeded():
    rows = _pattern_rows(64, 3)
    config = sasrec.SASRecConfig(num_items=NUM_ITEMS, max_len=5, hidden=8, layers=1)
    params = {"max_epochs": 2, "batch_size": 16, "seed": 7}
    a, _ = sasrec.train_sasrec(rows, rows, config, params, progress=False)
    b, _ = sasrec.train_sasrec(rows, rows, config, params, progress=False)
    assert torch.equal(a.score([[1, 2]]), b.score([[1, 2]]))


def test_unknown_training_parameter_is_an_error():
    with pytest.raises(ValueError, match="unknown"):
        sasrec.SASRecTrainParams.from_mapping({"learning_rate": 0.1})
