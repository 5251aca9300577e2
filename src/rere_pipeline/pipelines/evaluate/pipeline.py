"""Wiring of the ``evaluate`` pipeline: every model on the same rows, one report."""

from kedro.pipeline import Node, Pipeline

from . import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.evaluate_sft,
                [
                    "sft_model",
                    "catalogue",
                    "prompts_valid",
                    "prompts_test",
                    "params:evaluate",
                    "params:prompts",
                ],
                ["sft_evaluation", "sft_predictions"],
                name="evaluate_sft",
            ),
            Node(
                nodes.evaluate_rere,
                [
                    "rere_model",
                    "catalogue",
                    "prompts_valid",
                    "prompts_test",
                    "params:evaluate",
                    "params:prompts",
                ],
                ["rere_evaluation", "rere_predictions"],
                name="evaluate_rere",
            ),
            Node(
                nodes.combine_reports,
                ["sasrec_evaluation", "sft_evaluation", "rere_evaluation"],
                "evaluation",
                name="combine_reports",
            ),
            Node(
                nodes.compare_models,
                {
                    "test": "test",
                    "valid": "valid",
                    "train": "train",
                    "params": "params:evaluate",
                    "sasrec": "sasrec_predictions",
                    "sft": "sft_predictions",
                    "rere": "rere_predictions",
                },
                "model_comparison",
                name="compare_models",
            ),
            Node(
                nodes.markdown_table,
                ["evaluation", "params:evaluate", "model_comparison"],
                "evaluation_table",
                name="evaluation_table",
            ),
            Node(
                nodes.curves_figure,
                ["evaluation", "params:evaluate"],
                "evaluation_plot",
                name="evaluation_plot",
            ),
            Node(
                nodes.mlflow_metrics,
                ["evaluation", "model_comparison"],
                "evaluation_metrics",
                name="evaluation_metrics",
            ),
        ],
        tags="evaluate",
    )
