"""Wiring of the ``sft`` pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import fine_tune


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                fine_tune,
                ["backbone", "prompts_train", "prompts_valid", "params:sft"],
                ["sft_model", "sft_history", "sft_loss_plot", "sft_adapter"],
                name="fine_tune",
            )
        ],
        tags="sft",
    )
