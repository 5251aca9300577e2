"""Training helpers shared by the ``sft`` and ``rere`` pipelines: resumable directories and
TRL log histories as MLflow series.

A directory of trainer checkpoints is stamped with a fingerprint of the run (parameters, data
and the weights it starts from): a killed run with the same fingerprint resumes from its newest
checkpoint, a changed run starts afresh instead of resuming someone else's state (a re-trained
SFT model, or a retrain cycle whose champion changed, makes a new start).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rere_pipeline.recsys.backbone import weights_digest

log = logging.getLogger(__name__)


# Parameters that change how a run is watched or where it is kept, not what it trains: a
# killed run resumes even when one of them changed in between.
NOT_TRAINING = ("progress", "resume", "output_dir", "save_steps", "logging_steps")


def fingerprint(params: dict, prompts: pd.DataFrame, start: torch.nn.Module) -> str:
    """Hash of the training parameters (all but ``NOT_TRAINING``), every row's tokens (in
    order) and the starting weights."""
    params = {k: v for k, v in params.items() if k not in NOT_TRAINING}
    rows = hashlib.sha256()
    for ids in prompts["input_ids"]:  # ~10 ms for the 9,720 train rows
        rows.update(np.asarray(ids, dtype=np.int64).tobytes() + b"|")
    return hashlib.sha256(
        json.dumps(
            {"params": params, "rows": rows.hexdigest(), "start": weights_digest(start)},
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()


# The file a trainer writes last into a checkpoint folder: without it the save was cut short.
TRAINER_STATE = "trainer_state.json"
# The run's fingerprint, written first: it marks a directory as checkpoints ``prepare`` may clear.
STAMP_FILE = "fingerprint.txt"


def prepare(
    output_dir: Path, stamp: str, resume: bool = True, required: tuple[str, ...] = ()
) -> str | None:
    """Make ``output_dir`` ready for a run stamped ``stamp``; return the checkpoint to resume
    from, if any (only when ``resume`` and the directory belongs to this very run).

    That is the newest ``checkpoint-N`` holding the trainer's state and the ``required`` files
    (what the run's callbacks add when it saves). Newer folders without them, left by a run
    stopped while it saved, are removed, so the run resumes from the last complete save.
    Otherwise the run starts afresh, with the old checkpoints removed (so that a later resume
    cannot pick up a step of an older run). A non-empty directory without the stamp file is
    not a checkpoint directory (``output_dir`` pointed at a model, say) and is refused, never
    deleted."""
    stamp_file = output_dir / STAMP_FILE
    if output_dir.exists() and not stamp_file.exists() and any(output_dir.iterdir()):
        raise ValueError(
            f"{output_dir} is not empty and holds no {STAMP_FILE}: it is not a checkpoint "
            "directory of a training run, and starting afresh would delete it. Set output_dir "
            "to a new or empty directory"
        )
    if stamp_file.exists() and (not resume or stamp_file.read_text() != stamp):
        reason = "resume is false" if not resume else "another configuration"
        log.info("checkpoints in %s (%s): starting afresh", output_dir, reason)
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(stamp)
    last = _last_complete_checkpoint(output_dir, (TRAINER_STATE, *required)) if resume else None
    if last:
        log.info("resuming from %s", last)
    return last


def _last_complete_checkpoint(output_dir: Path, files: tuple[str, ...]) -> str | None:
    steps = {
        int(folder.name.removeprefix("checkpoint-")): folder
        for folder in output_dir.glob("checkpoint-*")
        if folder.is_dir() and folder.name.removeprefix("checkpoint-").isdigit()
    }
    for step in sorted(steps, reverse=True):
        folder = steps[step]
        missing = [name for name in files if not _complete(folder / name)]
        if not missing:
            return str(folder)
        log.warning(
            "%s lacks a complete %s (the run stopped while saving it): removed, resuming from "
            "the save before it",
            folder,
            ", ".join(missing),
        )
        shutil.rmtree(folder)
    return None


def _complete(path: Path) -> bool:
    """The file exists and, for JSON, parses (a write cut short leaves it empty or partial)."""
    if not path.is_file():
        return False
    if path.suffix != ".json":
        return True
    try:
        json.loads(path.read_text())
    except ValueError:
        return False
    return True


def log_history_series(history: list[dict], keys: list[str] | None = None) -> dict:
    """A trainer's ``log_history`` as MLflow metric series (``{key: [{value, step}]}``): the
    given keys, or every numeric one."""
    series: dict[str, list[dict]] = {}
    for entry in history:
        step = int(entry.get("step", 0))
        for key, value in entry.items():
            if key in ("step", "epoch") or (keys is not None and key not in keys):
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                series.setdefault(key, []).append({"value": float(value), "step": step})
    return series
