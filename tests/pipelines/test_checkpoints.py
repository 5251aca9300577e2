"""Resumable checkpoint directories (a run resumes only its own checkpoints) and the valid
samples training chooses on and evaluation reports on (``pipelines/samples.py``)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from rere_pipeline.pipelines import checkpoints, samples


def _checkpoint(folder, step: int) -> None:
    (folder / f"checkpoint-{step}").mkdir(parents=True)
    (folder / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")


def test_a_run_resumes_its_own_checkpoints_but_not_those_of_other_starting_weights(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    prompts = pd.DataFrame({"input_ids": [[5, 6, 7], [8, 9]]})
    params = {"learning_rate": 1e-4, "max_steps": 4}
    folder = tmp_path / "ckpt"

    stamp = checkpoints.fingerprint(params, prompts, model)
    assert checkpoints.prepare(folder, stamp) is None  # nothing to resume yet
    _checkpoint(folder, 2)
    assert checkpoints.prepare(folder, stamp).endswith("checkpoint-2")  # the same run: resume
    assert checkpoints.prepare(folder, stamp, resume=False) is None
    # a fresh start clears the old steps: killed at step 1, the next resume takes that, not 2
    _checkpoint(folder, 1)
    assert checkpoints.prepare(folder, stamp).endswith("checkpoint-1")

    with torch.no_grad():  # the model it starts from was re-trained in between
        model.weight[0, 0] += 1e-3
    changed = checkpoints.fingerprint(params, prompts, model)
    assert changed != stamp
    assert checkpoints.prepare(folder, changed) is None
    assert not (folder / "checkpoint-2").exists()  # the other start's state is gone
    assert changed != checkpoints.fingerprint({**params, "max_steps": 5}, prompts, model)
    # watching or keeping the run differently is the same run: it still resumes
    for key, value in (("progress", False), ("logging_steps", 1), ("save_steps", 7)):
        assert changed == checkpoints.fingerprint({**params, key: value}, prompts, model)


def test_a_directory_that_holds_no_checkpoints_is_refused_not_deleted(tmp_path):
    model_dir = tmp_path / "sft"  # output_dir pointed at a model by mistake
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(ValueError, match="sft is not empty and holds no fingerprint.txt"):
        checkpoints.prepare(model_dir, "stamp")
    assert (model_dir / "model.safetensors").read_bytes() == b"weights"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert checkpoints.prepare(empty, "stamp") is None  # an empty directory is fine


def test_a_run_stopped_while_saving_resumes_from_the_save_before(tmp_path):
    folder = tmp_path / "ckpt"
    checkpoints.prepare(folder, "stamp")
    for step in (9, 10, 20):  # complete: the trainer's state and the callback's file
        _checkpoint(folder, step)
        (folder / f"checkpoint-{step}" / "scores.json").write_text("{}")
    _checkpoint(folder, 30)  # stopped before the callback saved its file
    _checkpoint(folder, 35)
    (folder / "checkpoint-35" / "scores.json").write_text('{"history": [')  # cut mid-write
    (folder / "checkpoint-40").mkdir()  # stopped while the weights were written
    (folder / "checkpoint-40" / "model.safetensors").write_bytes(b"")

    resumed = checkpoints.prepare(folder, "stamp", required=("scores.json",))
    assert resumed.endswith("checkpoint-20")  # by step, not by name: 20 > 10 > 9
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == [
        "checkpoint-10",
        "checkpoint-20",
        "checkpoint-9",
    ]
    assert checkpoints.prepare(folder, "stamp", required=("scores.json",)) == resumed


def test_a_run_on_other_rows_does_not_resume_even_with_the_same_count_and_first_row():
    model = torch.nn.Linear(3, 2)
    params = {"learning_rate": 1e-4}
    prompts = pd.DataFrame({"input_ids": [[5, 6, 7], [8, 9], [10]]})
    stamp = checkpoints.fingerprint(params, prompts, model)
    assert stamp == checkpoints.fingerprint(params, prompts.copy(), model)
    for other in ([[5, 6, 7], [8, 9], [11]], [[5, 6, 7], [10], [8, 9]], [[5, 6, 7], [8], [9, 10]]):
        assert checkpoints.fingerprint(params, pd.DataFrame({"input_ids": other}), model) != stamp


def test_training_chooses_on_valid_rows_that_evaluation_does_not_report():
    valid = pd.DataFrame({"user_id": [f"u{i}" for i in range(50)]}, index=range(100, 150))
    reported = samples.scored_rows(valid, {"valid": 30, "test": None}, "valid")
    chosen_on = samples.selection_sample(valid, 20)  # SFT early stopping, ReRe keep-best
    assert len(reported) == 30 and len(chosen_on) == 20
    assert reported.index.is_monotonic_increasing  # in split order, as before
    assert set(reported.index).isdisjoint(chosen_on.index)  # 30 + 20 rows fit in 50
    assert chosen_on.index.equals(samples.selection_sample(valid, 20).index)  # fixed
    assert set(samples.selection_sample(valid, 10).index) < set(chosen_on.index)
    # more than the split holds: they overlap, the whole split when a limit is off
    assert not set(samples.selection_sample(valid, 30).index).isdisjoint(reported.index)
    assert samples.report_sample(valid, None) is valid
