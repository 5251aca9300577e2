"""Kedro datasets of this project.

* ``SourceCSVDataset`` is ``pandas.CSVDataset`` that remembers which file a frame came from
(``frame.attrs["source"]``), so that validation errors and quarantined rows name the file,
and that turns an unreadable file into an error naming it and the rule it broke.
* ``HFModelDataset`` is a Hugging Face model directory (a causal LM and its tokenizer).
* ``PeftAdapterDataset`` is a PEFT LoRA adapter directory (or a note that there is none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from kedro.io import AbstractDataset, DatasetError
from kedro_datasets.pandas import CSVDataset

from rere_pipeline.hooks import RunInterrupted


class SourceCSVDataset(CSVDataset):
    """A CSV dataset whose loaded frame carries its source path in ``attrs["source"]``."""

    def __init__(self, *, filepath: str, **kwargs: Any) -> None:
        super().__init__(filepath=filepath, **kwargs)
        self._source = filepath

    def load(self) -> pd.DataFrame:
        try:
            frame = super().load()
        except RunInterrupted:
            raise
        except Exception as exc:  # pandas raises many types for a corrupt file
            raise DatasetError(
                f"{self._source}: file is unreadable (rule: readable_csv): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        frame.attrs["source"] = self._source
        return frame


class HFModelDataset(AbstractDataset):
    """A Hugging Face model directory (weights as safetensors + tokenizer) as a ``Backbone``.

    Loading goes through ``AutoTokenizer`` / ``AutoModelForCausalLM`` with local files only;
    ``load_args`` may set ``dtype``, ``device`` and ``trust_remote_code`` (off by default).
    Saving is atomic: a failed save leaves the previous model in place.
    """

    def __init__(
        self, *, path: str, load_args: dict[str, Any] | None = None, metadata: dict | None = None
    ) -> None:
        self._path = Path(path)
        self._load_args = dict(load_args or {})
        self.metadata = metadata

    def load(self):
        from rere_pipeline.recsys.backbone import load_backbone

        if not (self._path / "config.json").exists():
            raise DatasetError(
                f"{self._path}: no model here (config.json missing); run the stage that writes it first"
            )
        return load_backbone(self._path, **self._load_args)

    def save(self, data) -> None:
        from rere_pipeline.recsys.backbone import save_backbone

        save_backbone(data, self._path)

    def _exists(self) -> bool:
        return (self._path / "config.json").exists()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "load_args": self._load_args}


class PeftAdapterDataset(AbstractDataset):
    """A LoRA adapter as PEFT saves it (``adapter_config.json`` + safetensors).

    ``save`` takes the adapter's files as ``{name: bytes}``; with full fine-tuning (no
    adapter) that is a single ``NO_ADAPTER.md`` note, so the folder always exists for DVC.
    ``load`` gives the folder when it holds an adapter (``PeftModel.from_pretrained(model,
    path)``), else None. Saves are atomic, as for ``HFModelDataset``.
    """

    def __init__(self, *, path: str, metadata: dict | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> Path | None:
        return self._path if (self._path / "adapter_config.json").exists() else None

    def save(self, data: dict[str, bytes]) -> None:
        from rere_pipeline.recsys.backbone import replace_directory

        def write(staging: Path) -> None:
            staging.mkdir(parents=True)
            for name, content in data.items():
                (staging / Path(name).name).write_bytes(content)

        replace_directory(self._path, write)

    def _exists(self) -> bool:
        return self._path.exists()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
