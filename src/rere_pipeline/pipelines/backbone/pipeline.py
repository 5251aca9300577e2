"""Wiring of the ``backbone`` pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import make_backbone


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                make_backbone,
                ["catalogue", "params:backbone", "params:prompts"],
                "backbone",
                name="make_backbone",
            )
        ],
        tags="backbone",
    )
