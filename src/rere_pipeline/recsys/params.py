"""Parameters read into dataclasses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields


def dataclass_from_params(cls, params: Mapping, section: str):
    """``cls(**params)``, refusing a key ``cls`` has no field for: a misspelt key would
    otherwise leave its default in force without a word. ``section`` names the parameters
    in the error (e.g. ``prompts``)."""
    known = sorted(f.name for f in fields(cls))
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"{section}: unknown key(s) {unknown}; known: {known}")
    return cls(**params)
