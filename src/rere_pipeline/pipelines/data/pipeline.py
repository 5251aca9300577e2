"""Wiring of the ``data`` pipeline (every path is in ``conf/base/catalog.yml``)."""

from kedro.pipeline import Node, Pipeline

from rere_pipeline.recsys.sequences import release_events

from . import nodes


def create_pipeline(**kwargs) -> Pipeline:
    validation_params = "params:data.validation"
    return Pipeline(
        [
            Node(
                nodes.validate_catalogue,
                ["raw_items", validation_params],
                ["catalogue_unchecked", "quarantine_items", "validation_items"],
                name="validate_catalogue",
            ),
            *[
                Node(
                    nodes.validate_interactions,
                    [f"raw_{split}", "catalogue_unchecked", validation_params],
                    [f"{split}_unchecked", f"quarantine_{split}", f"validation_{split}"],
                    name=f"validate_{split}_rows",
                )
                for split in ("valid", "test")
            ],
            Node(
                nodes.collect_validation,
                [validation_params, "validation_items", "validation_valid", "validation_test"],
                ["validation_report", "validation_docs"],
                name="collect_validation",
            ),
            Node(
                nodes.enforce_validation,
                ["validation_report", "catalogue_unchecked", "valid_unchecked", "test_unchecked"],
                ["catalogue", "release_valid", "release_test"],
                name="enforce_validation",
            ),
            Node(
                release_events, ["release_valid", "release_test"], "events", name="release_events"
            ),
            Node(
                nodes.build_release_splits,
                ["events", "catalogue", "release_valid", "release_test", "params:data"],
                ["train", "valid", "test", "cutoff"],
                name="build_release_splits",
            ),
            Node(
                nodes.summarise,
                ["train", "valid", "test", "catalogue", "events", "cutoff"],
                ["data_summary", "data_summary_metrics"],
                name="summarise_data",
            ),
        ],
        tags="data",
    )
