"""The ``retrain`` pipeline (new logs -> challenger -> promotion) and the demo's new logs."""

from .pipeline import create_demo_pipeline, create_pipeline

__all__ = ["create_pipeline", "create_demo_pipeline"]
