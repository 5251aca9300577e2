"""The valid (and test) rows each stage uses.

Valid rows have two uses that must not share rows: training *chooses* on some (SASRec's and
SFT's early stopping, ReRe's keep-best and collapse check, tuning's objective) and evaluation
*reports* others (the figure promotion compares). Both samples come from one fixed permutation
of the split, from its two ends, so they are disjoint while together they fit in the split: a
checkpoint picked for its score on some rows is reported on rows it was not picked on.
"""

from __future__ import annotations

import pandas as pd


def _fixed_order(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.sample(frac=1.0, random_state=0)


def report_sample(rows: pd.DataFrame, n) -> pd.DataFrame:
    """The rows evaluation scores: the first ``n`` of the fixed permutation, in split order
    (every row when ``n`` is falsy)."""
    if not n:
        return rows
    return _fixed_order(rows).head(int(n)).sort_index()


def selection_sample(rows: pd.DataFrame, n) -> pd.DataFrame:
    """The rows training chooses on: the last ``n`` of the fixed permutation (every row when
    ``n`` is falsy), so they miss ``report_sample`` while the two fit in the split together."""
    if not n:
        return rows
    return _fixed_order(rows).iloc[::-1].head(int(n))


def scored_rows(rows: pd.DataFrame, max_rows, split: str) -> pd.DataFrame:
    """The rows of ``split`` that evaluation scores (every model, SASRec included): all, or a
    fixed sample (``evaluate.max_rows``) that training's valid samples stay clear of
    (``report_sample``)."""
    return report_sample(rows, rows_limit(max_rows, split))


def rows_limit(max_rows, split: str) -> int | None:
    """``evaluate.max_rows``: null (whole split), one number for every split, or per split."""
    if isinstance(max_rows, dict):
        max_rows = max_rows.get(split)
    return int(max_rows) if max_rows else None
