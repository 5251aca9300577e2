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


# the parameters naming how many valid rows training chooses on (``selection_sample``), and
# whether leaving one out means the whole split (True) or another chooser's rows (False:
# tuning without a budget override uses rere.valid_rows); a section that is absent altogether
# is not checked
CHOOSERS = {
    ("baselines", "sasrec", "valid_rows"): True,
    ("sft", "valid_rows"): True,
    ("rere", "valid_rows"): True,
    ("tune", "budget", "valid_rows"): False,
}


def check_samples_apart(params: dict) -> None:
    """Refuse parameters under which the valid rows evaluation reports (and promotion
    compares) would include rows training chose on: ``evaluate.max_rows.valid`` or a chooser
    (``CHOOSERS``) set to null or 0, which means the whole split."""
    if not params.get("evaluate"):
        return  # nothing reported
    chosen = _chosen(params)
    whole = [name for name, n in chosen.items() if not n]
    if rows_limit(params["evaluate"].get("max_rows"), "valid") is None:
        whole.insert(0, "evaluate.max_rows.valid")
    if whole and chosen:
        sizes = ", ".join(f"{name}: {n or 'null'}" for name, n in chosen.items())
        raise ValueError(
            f"{', '.join(whole)}: null (or left out) means the whole valid split, so the valid rows "
            "evaluation reports, which promotion compares, would include rows training chooses "
            f"on ({sizes}). Set each to a number of rows: the two samples come from opposite "
            "ends of one permutation, so they stay apart while they fit in the split together"
        )


def check_samples_fit(params: dict, valid_rows: int) -> None:
    """Refuse sample sizes that do not fit in the valid split together: with
    ``evaluate.max_rows.valid`` + a chooser's rows above ``valid_rows``, the two ends of the
    permutation meet and the rows evaluation reports include rows that training chose on.
    (The sizes are known before a run, the split's length only once it is loaded.)"""
    report = rows_limit((params.get("evaluate") or {}).get("max_rows"), "valid")
    if report is None:
        return  # nothing reported, or the whole split (refused by check_samples_apart)
    over = {
        name: int(n) for name, n in _chosen(params).items() if n and int(n) + report > valid_rows
    }
    if over:
        sizes = ", ".join(f"{name}: {n}" for name, n in over.items())
        raise ValueError(
            f"the valid split has {valid_rows} rows, fewer than evaluate.max_rows.valid "
            f"({report}) plus the rows training chooses on ({sizes}): the valid rows evaluation "
            "reports, which promotion compares, would include rows training chose on. Lower "
            f"them so that each chooser's rows plus {report} fit in {valid_rows}"
        )


def _chosen(params: dict) -> dict:
    """The ``CHOOSERS`` set in ``params`` (or meaning the whole split by their absence)."""
    chosen = {}
    for path, missing_is_whole in CHOOSERS.items():
        node = params
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and (path[-1] in node or missing_is_whole):
            chosen[".".join(path)] = node.get(path[-1])
    return chosen
