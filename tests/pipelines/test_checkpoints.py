"""Resumable checkpoint directories: a run resumes only its own checkpoints."""

from __future__ import annotations

import pandas as pd
import torch

from rere_pipeline.pipelines import checkpoints


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

    with torch.no_grad():  # the model it starts from was re-trained in between
        model.weight[0, 0] += 1e-3
    changed = checkpoints.fingerprint(params, prompts, model)
    assert changed != stamp
    assert checkpoints.prepare(folder, changed) is None
    assert not (folder / "checkpoint-2").exists()  # the other start's state is gone
    assert changed != checkpoints.fingerprint({**params, "max_steps": 5}, prompts, model)
