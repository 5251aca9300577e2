"""Wiring of the ``register`` (part of ``full``) and ``promote`` pipelines."""

from kedro.pipeline import Node, Pipeline

from . import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.register_challenger,
                [
                    "sft_model",
                    "rere_model",
                    "catalogue",
                    "valid",
                    "evaluation",
                    "params:registry",
                    "params:evaluate",
                    "params:prompts",
                ],
                "registered_challenger",
                name="register_challenger",
            )
        ],
        tags="register",
    )


def create_promote_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.promote_challenger,
                ["valid", "params:registry", "params:evaluate"],
                "promotion_decision",
                name="promote_challenger",
            )
        ],
        tags="promote",
    )
