"""The ``tune`` pipeline: an Optuna study over ReRe, then the final training with its best."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
