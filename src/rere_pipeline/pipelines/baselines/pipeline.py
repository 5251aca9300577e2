"""Wiring of the ``baselines`` pipeline (paths in ``conf/base/catalog_baselines.yml``)."""

from kedro.pipeline import Node, Pipeline

from . import nodes


def create_pipeline(**kwargs) -> Pipeline:
    params = "params:baselines.sasrec"
    return Pipeline(
        [
            Node(
                nodes.train_sasrec,
                ["train", "valid", "catalogue", params],
                ["sasrec_model", "sasrec_history", "sasrec_training_plot"],
                name="train_sasrec",
            ),
            Node(
                nodes.evaluate_sasrec,
                ["sasrec_model", "valid", "test", "catalogue", params, "params:evaluate.max_rows"],
                ["sasrec_evaluation", "sasrec_predictions", "sasrec_metrics"],
                name="evaluate_sasrec",
            ),
        ],
        tags="baselines",
    )
