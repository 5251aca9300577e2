"""Nodes of the ``sft`` pipeline."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd

from rere_pipeline.pipelines import checkpoints, samples
from rere_pipeline.recsys import sft
from rere_pipeline.recsys.backbone import Backbone

log = logging.getLogger(__name__)


def _columns(prompts: pd.DataFrame) -> dict[str, list]:
    return {
        "input_ids": [list(x) for x in prompts["input_ids"]],
        "completion_mask": [list(x) for x in prompts["completion_mask"]],
    }


def fine_tune(
    backbone: Backbone, prompts_train: pd.DataFrame, prompts_valid: pd.DataFrame, params: dict
) -> tuple[Backbone, dict, object, dict[str, bytes]]:
    """SFT on the train prompts, its loss measured on ``valid_rows`` valid prompts (early
    stopping on it unless ``early_stopping`` is false).

    Returns the model (any LoRA adapter merged), its loss series and plot, and the adapter's
    files (a note when LoRA is off)."""
    valid = samples.selection_sample(prompts_valid, params["valid_rows"])
    output_dir = Path(params["output_dir"])
    resume = checkpoints.prepare(
        output_dir,
        checkpoints.fingerprint(params, prompts_train, backbone.model),
        resume=bool(params.get("resume", True)),
    )
    model, history, adapter = sft.train_sft(
        backbone.model,
        backbone.tokenizer,
        _columns(prompts_train),
        _columns(valid),
        params,
        output_dir,
        resume_from_checkpoint=resume,
    )
    shutil.rmtree(output_dir)  # finished: the model itself is the output
    adapter = adapter or {
        "NO_ADAPTER.md": b"sft.lora.enabled is false: every weight was fine-tuned (see data/06_models/sft)\n"
    }
    return (
        Backbone(backbone.tokenizer, model),
        training_metrics(history),
        loss_figure(history),
        adapter,
    )


def training_metrics(history: list[dict]) -> dict:
    """TRL's log history as MLflow metric series (``sft.loss``, ``sft.eval_loss`` ...)."""
    return checkpoints.log_history_series(
        history,
        [
            "loss",
            "eval_loss",
            "learning_rate",
            "grad_norm",
            "mean_token_accuracy",
            "eval_mean_token_accuracy",
        ],
    )


def loss_figure(history: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("loss", "train loss"), ("eval_loss", "valid loss")):
        points = [(e["step"], e[key]) for e in history if key in e]
        if points:
            ax.plot(
                *zip(*points, strict=True), marker="o" if key == "eval_loss" else None, label=label
            )
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy on completion tokens")
    ax.set_title("SFT")
    ax.legend()
    fig.tight_layout()
    return fig
