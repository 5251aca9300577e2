"""Wiring of the ``ablation`` pipeline (not part of ``full``: it trains every arm)."""

from kedro.pipeline import Node, Pipeline

from .nodes import run_ablation


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                run_ablation,
                [
                    "sft_model",
                    "backbone",
                    "catalogue",
                    "prompts_train",
                    "train",
                    "prompts_valid",
                    "prompts_test",
                    "sasrec_model",
                    "params:rere",
                    "params:ablation",
                    "params:evaluate",
                    "params:prompts",
                ],
                ["ablation_results", "ablation_table"],
                name="run_ablation",
            )
        ],
        tags="ablation",
    )
