"""Wiring of the ``prompts`` pipeline: one node per split."""

from kedro.pipeline import Node, Pipeline

from .nodes import encode_split


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                encode_split,
                ["backbone", split, "params:prompts", "catalogue"],
                f"prompts_{split}",
                name=f"encode_{split}_prompts",
            )
            for split in ("train", "valid", "test")
        ],
        tags="prompts",
    )
