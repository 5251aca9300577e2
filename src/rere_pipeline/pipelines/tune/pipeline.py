"""Wiring of the ``tune`` pipeline: the study, then ReRe trained with its best parameters.

A worker that should only add trials to a shared study runs
``kedro run --pipelines=tune --to-nodes=tune_rere``.
"""

from kedro.pipeline import Node, Pipeline

from rere_pipeline.pipelines.rere.nodes import reinforce
from rere_pipeline.pipelines.rere.pipeline import RERE_INPUTS

from . import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.tune_rere,
                [*RERE_INPUTS, "params:tune", "params:rere", "params:prompts"],
                [
                    "tuning_best",
                    "tuning_trials",
                    "tuning_history_plot",
                    "tuning_importance_plot",
                    "tuning_metrics",
                ],
                name="tune_rere",
            ),
            Node(
                nodes.tuned_rere_params,
                ["params:rere", "tuning_best"],
                "rere_params_tuned",
                name="tuned_rere_params",
            ),
            Node(
                reinforce,
                [*RERE_INPUTS, "rere_params_tuned", "params:prompts"],
                ["rere_model", "rere_history", "rere_training_plot"],
                name="reinforce_tuned",
            ),
        ],
        tags="tune",
    )
