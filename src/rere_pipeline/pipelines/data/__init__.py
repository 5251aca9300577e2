"""The ``data`` pipeline: validated ingestion of the release and the train/valid/test rows."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
