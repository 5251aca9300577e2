"""Kedro datasets of this project.

* ``SourceCSVDataset`` is ``pandas.CSVDataset`` that remembers which file a frame came from
(``frame.attrs["source"]``) and the line each row starts on (``frame.attrs["lines"]``), so
that validation errors and quarantined rows name the file and line, and that turns an
unreadable file into an error naming it and the rule it broke.
* ``HFModelDataset`` is a Hugging Face model directory (a causal LM and its tokenizer).
* ``PeftAdapterDataset`` is a PEFT LoRA adapter directory (or a note that there is none).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
from kedro.io import AbstractDataset, DatasetError
from kedro_datasets.pandas import CSVDataset

from rere_pipeline.atomic import recover_directory, replace_directory
from rere_pipeline.interrupts import RunInterrupted

# the pandas.read_csv arguments that csv_record_lines follows; with any other (skiprows,
# comment, ...) the lines are not worked out
_LINE_AWARE_ARGS = {"sep", "header", "names", "quoting", "dtype", "keep_default_na", "encoding"}


class RowLines:
    """The 1-based file line of each row of a frame, as ``frame.attrs["lines"]`` holds it.

    pandas deep-copies and compares ``attrs`` in most operations, so a list of a large file's
    lines would slow every one of them; this read-only array copies as itself."""

    __slots__ = ("_lines",)

    def __init__(self, lines) -> None:
        self._lines = np.asarray(lines, dtype=np.int64)
        self._lines.flags.writeable = False

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, row: int) -> int:
        return int(self._lines[row])

    def tolist(self) -> list[int]:
        return self._lines.tolist()

    def __deepcopy__(self, memo) -> RowLines:
        return self  # read-only

    def __eq__(self, other) -> bool:
        return isinstance(other, RowLines) and np.array_equal(self._lines, other._lines)

    __hash__ = None


def csv_record_lines(
    path: str | Path, frame: pd.DataFrame, *, read_args: dict[str, Any] | None = None
) -> RowLines | None:
    """The 1-based line of ``path`` on which each row of ``frame`` (read from it by
    ``pandas.read_csv(path, **read_args)``) starts, or None if that cannot be told for sure.

    pandas skips blank and whitespace-only lines, and a quoted cell may span lines, so the
    row number plus the header is not the line. The file is read again with ``csv``, skipping
    what pandas skips; the answer is kept only if every row's first cell matches the frame.
    """
    args = dict(read_args or {})
    header_arg = args.get("header", "infer")  # pandas: "infer" is line 0 unless names are given
    if set(args) - _LINE_AWARE_ARGS or header_arg not in ("infer", 0, None):
        return None
    sep = args.get("sep", ",")
    if not (isinstance(sep, str) and len(sep) == 1):
        return None  # a regex or sniffed separator: csv cannot follow pandas
    header = header_arg == 0 or (header_arg == "infer" and "names" not in args)
    dialect = {"delimiter": sep, "quoting": args.get("quoting", csv.QUOTE_MINIMAL)}
    encoding = args.get("encoding", "utf-8")
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        encoding = "utf-8-sig"  # pandas drops a byte-order mark; so must the first cell here
    starts, first_cells, end = [], [], 0
    try:
        with fsspec.open(
            str(path), "rt", compression="infer", encoding=encoding, newline=""
        ) as text:
            reader = csv.reader(text, **dialect)
            for row in reader:
                start, end = end + 1, reader.line_num
                if not row or (len(row) == 1 and row[0] and not row[0].strip(" \t")):
                    continue  # a blank line: pandas skips it
                if header:
                    header = False
                    continue
                starts.append(start)
                first_cells.append(row[0])
    except (csv.Error, UnicodeDecodeError):  # pandas read it; csv cannot (a huge cell, ...)
        return None
    if len(starts) != len(frame) or (
        len(frame.columns) and first_cells != frame.iloc[:, 0].astype(str).tolist()
    ):
        return None
    return RowLines(starts)


class SourceCSVDataset(CSVDataset):
    """A CSV dataset whose loaded frame carries its source path in ``attrs["source"]`` and the
    line each row starts on in ``attrs["lines"]`` (None where that cannot be told)."""

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
        frame.attrs["lines"] = (
            csv_record_lines(self._get_load_path(), frame, read_args=self._load_args)
            if self._protocol == "file"
            else None
        )
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

        if not self._exists():
            raise DatasetError(
                f"{self._path}: no model here (config.json missing); run the stage that writes it first"
            )
        return load_backbone(self._path, **self._load_args)

    def save(self, data) -> None:
        from rere_pipeline.recsys.backbone import save_backbone

        save_backbone(data, self._path)

    def _exists(self) -> bool:
        recover_directory(self._path)  # a save stopped mid-swap left the model aside
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
        recover_directory(self._path)
        return self._path if (self._path / "adapter_config.json").exists() else None

    def save(self, data: dict[str, bytes]) -> None:
        def write(staging: Path) -> None:
            staging.mkdir(parents=True)
            for name, content in data.items():
                (staging / Path(name).name).write_bytes(content)

        replace_directory(self._path, write)

    def _exists(self) -> bool:
        recover_directory(self._path)
        return self._path.exists()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
