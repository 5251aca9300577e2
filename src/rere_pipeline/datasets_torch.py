"""Kedro datasets for torch models of this project.

``SASRecDataset`` saves a ``recsys.sasrec.SASRec`` as a folder holding ``model.safetensors``
and ``config.json`` (never pickle), replacing the previous folder only once both are written,
and loads it back in eval mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset

from rere_pipeline.atomic import recover_directory, replace_directory
from rere_pipeline.recsys import sasrec


class SASRecDataset(AbstractDataset[sasrec.SASRec, sasrec.SASRec]):
    """A SASRec model folder: ``<path>/model.safetensors`` + ``<path>/config.json``."""

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> sasrec.SASRec:
        recover_directory(self._path)  # a save stopped mid-swap left the model aside
        return sasrec.load_sasrec(self._path)

    def save(self, data: sasrec.SASRec) -> None:
        # written to a staging folder, then swapped in: a failed save keeps the previous model
        replace_directory(self._path, lambda staging: sasrec.save_sasrec(data, staging))

    def _exists(self) -> bool:
        recover_directory(self._path)
        return (self._path / sasrec.WEIGHTS_FILE).is_file() and (
            self._path / sasrec.CONFIG_FILE
        ).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
