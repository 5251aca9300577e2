"""The ``register`` and ``promote`` pipelines (MLflow model registry)."""

from .pipeline import create_pipeline, create_promote_pipeline

__all__ = ["create_pipeline", "create_promote_pipeline"]
