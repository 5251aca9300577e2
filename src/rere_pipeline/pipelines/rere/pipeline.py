"""Wiring of the ``rere`` pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import reinforce

# The models and rows ReRe trains on: the leading inputs of ``reinforce``, ``tune_rere`` and
# ``run_ablation``.
RERE_INPUTS = [
    "sft_model",
    "backbone",
    "catalogue",
    "prompts_train",
    "train",
    "prompts_valid",
    "sasrec_model",
]


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                reinforce,
                [*RERE_INPUTS, "params:rere", "params:prompts"],
                ["rere_model", "rere_history", "rere_training_plot"],
                name="reinforce",
            )
        ],
        tags="rere",
    )
