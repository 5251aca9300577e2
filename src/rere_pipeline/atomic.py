"""Writes that either complete or leave what was there: a file or a directory is written
under a staging name, then renamed into place (a crash in between never leaves half of it).

No torch or transformers here: the datasets import it without loading a model library.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def replace_file(path: str | Path, write: Callable[[Path], object]) -> None:
    """Have ``write(staging)`` write a new file, then rename it over ``path`` (parent folders
    created): a failed write leaves whatever was at ``path`` untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    write(staging)
    os.replace(staging, path)


def replace_directory(path: str | Path, write: Callable[[Path], object]) -> None:
    """Have ``write(staging)`` fill a new directory, then swap it in for ``path``: a failed
    write leaves whatever was at ``path`` untouched."""
    path = Path(path)

    def remove(leftover: Path) -> None:  # a folder, or a file in the way
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)
        else:
            leftover.unlink(missing_ok=True)

    staging = path.with_name(path.name + ".saving")
    previous = path.with_name(path.name + ".previous")
    recover_directory(path)
    remove(staging)
    write(staging)
    remove(previous)
    if path.exists():
        path.rename(previous)
    staging.rename(path)
    remove(previous)


def recover_directory(path: str | Path) -> None:
    """Put back the directory a ``replace_directory`` stopped between its two renames had
    moved aside (``<path>.previous``), so that it loads again; nothing to do otherwise."""
    path = Path(path)
    previous = path.with_name(path.name + ".previous")
    if not path.exists() and previous.is_dir():
        previous.rename(path)
