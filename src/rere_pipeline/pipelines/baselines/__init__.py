"""The ``baselines`` pipeline: SASRec trained on the rows, scored like the LM (by title)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
