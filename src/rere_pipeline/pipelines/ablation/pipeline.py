"""Wiring of the ``ablation`` pipeline (not part of ``full``: it trains every arm)."""

from kedro.pipeline import Node, Pipeline

from rere_pipeline.pipelines.rere.pipeline import RERE_INPUTS

from .nodes import clear_progress, run_ablation


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                run_ablation,
                [
                    *RERE_INPUTS,
                    "prompts_test",
                    "params:rere",
                    "params:ablation",
                    "params:evaluate",
                    "params:prompts",
                ],
                ["ablation_results", "ablation_table"],
                name="run_ablation",
            ),
            Node(
                clear_progress,
                ["ablation_results", "ablation_table", "params:ablation"],
                None,
                name="clear_ablation_progress",
            ),
        ],
        tags="ablation",
    )
