"""Kedro datasets of this project.

``SourceCSVDataset`` is ``pandas.CSVDataset`` that remembers which file a frame came from
(``frame.attrs["source"]``), so that validation errors and quarantined rows name the file,
and that turns an unreadable file into an error naming it and the rule it broke.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from kedro.io import DatasetError
from kedro_datasets.pandas import CSVDataset


class SourceCSVDataset(CSVDataset):
    """A CSV dataset whose loaded frame carries its source path in ``attrs["source"]``."""

    def __init__(self, *, filepath: str, **kwargs: Any) -> None:
        super().__init__(filepath=filepath, **kwargs)
        self._source = filepath

    def load(self) -> pd.DataFrame:
        try:
            frame = super().load()
        except Exception as exc:  # pandas raises many types for a corrupt file
            raise DatasetError(
                f"{self._source}: file is unreadable (rule: readable_csv): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        frame.attrs["source"] = self._source
        return frame
