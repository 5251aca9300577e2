"""Wiring of the ``retrain`` and ``demo_new_logs`` pipelines."""

from kedro.pipeline import Node, Pipeline

from . import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.retrain_cycle,
                [
                    "catalogue",
                    "events",
                    "params:retrain",
                    "params:data",
                    "params:prompts",
                    "params:sft",
                    "params:rere",
                    "params:evaluate",
                    "params:registry",
                ],
                "retrain_report",
                name="retrain_cycle",
            )
        ],
        tags="retrain",
    )


def create_demo_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.demo_new_logs,
                ["events", "params:retrain"],
                "demo_message",
                name="demo_new_logs",
            )
        ],
        tags="demo_new_logs",  # its own stage run: it prepares data, it retrains nothing
    )
