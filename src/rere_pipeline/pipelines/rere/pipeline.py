"""Wiring of the ``rere`` pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import reinforce


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                reinforce,
                [
                    "sft_model",
                    "backbone",
                    "catalogue",
                    "prompts_train",
                    "train",
                    "prompts_valid",
                    "sasrec_model",
                    "params:rere",
                    "params:prompts",
                ],
                ["rere_model", "rere_history", "rere_training_plot"],
                name="reinforce",
            )
        ],
        tags="rere",
    )
