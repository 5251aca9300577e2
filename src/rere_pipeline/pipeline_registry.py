"""Project pipelines. ``full`` chains every stage that exists, in data-flow order."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from rere_pipeline.pipelines import data


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {"data": data.create_pipeline()}
    pipelines["full"] = sum(pipelines.values(), Pipeline([]))
    pipelines["__default__"] = pipelines["full"]
    return pipelines
