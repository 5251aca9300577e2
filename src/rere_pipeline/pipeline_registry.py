"""Project pipelines, registered by name; ``full`` chains them in data-flow order.

The registry is explicit rather than ``find_pipelines``: Kedro 1.7 loads only the pipeline
modules named on the command line, so a composed pipeline like ``full`` must be built here.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from rere_pipeline.pipelines import (
    ablation,
    backbone,
    baselines,
    data,
    evaluate,
    prompts,
    registry,
    rere,
    retrain,
    sft,
    tune,
)

STAGES = {
    "data": data,
    "backbone": backbone,
    "prompts": prompts,
    "sft": sft,
    "baselines": baselines,
    "rere": rere,
    "evaluate": evaluate,
    "register": registry,
}
# Run on demand, not part of ``full``.
ON_DEMAND = {
    "ablation": ablation.create_pipeline,  # trains every arm
    "promote": registry.create_promote_pipeline,
    "tune": tune.create_pipeline,
    "retrain": retrain.create_pipeline,
    "demo_new_logs": retrain.create_demo_pipeline,
}


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {name: module.create_pipeline() for name, module in STAGES.items()}
    pipelines["full"] = sum(pipelines.values(), Pipeline([]))
    pipelines["__default__"] = pipelines["full"]
    pipelines.update({name: create() for name, create in ON_DEMAND.items()})
    return pipelines
