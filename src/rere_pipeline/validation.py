"""Great Expectations validation of raw inputs, with row-level quarantine.

Each input file is checked in two passes, both as Great Expectations suites:

1. **schema** - every required column exists. A missing column makes the file *fatal*.
2. **rows** - one expectation per row-level rule (``Rule``). Cells are read as strings; the
   typed and cross-file facts a rule needs (is the id an integer, is it in the catalogue, do
   the history lists parse and line up) are computed first as helper columns (``_name``),
   and the expectation runs on them. ``result_format=COMPLETE`` gives the index of every
   row that breaks a rule: those rows are quarantined with the rules they broke, the rest
   pass on. A file whose share of quarantined rows exceeds ``max_bad_fraction`` is fatal.

``FileValidation`` holds one file's outcome; ``raise_if_fatal`` stops the run with every
fatal finding, each naming the file, the column and the rule.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from rere_pipeline.recsys.sequences import parse_list_cell, to_unix_seconds

log = logging.getLogger(__name__)

RELEASE_COLUMNS = [
    "user_id",
    "history_item_id",
    "history_item_title",
    "history_rating",
    "history_timestamp",
    "item_id",
    "item_title",
    "rating",
    "timestamp",
]
CATALOGUE_COLUMNS = ["title", "item_id"]
EVENT_LOG_COLUMNS = ["user_id", "item_id", "timestamp"]
QUARANTINE_COLUMNS = ["source_file", "source_row", "source_line", "rules", "columns"]

# ASCII digits only (``\d`` also matches "２" and every other Unicode digit, which int()
# accepts), at most 18 of them: every id and timestamp that passes fits an int64
_INTEGER = r"^\s*[0-9]{1,18}\s*$"
_NON_BLANK = r"\S"


class DataValidationError(ValueError):
    """An input file is unusable: a column is missing, or too many rows break a rule."""


@dataclass(frozen=True)
class Limits:
    """The numbers the rules check against (``params:data.validation``)."""

    max_bad_fraction: float = 0.01
    rating_min: float = 1.0
    rating_max: float = 5.0
    history_min: int = 1
    history_max: int = 10
    timestamp_min: int = 820_454_400  # 1996-01-01
    timestamp_max: int | None = None  # None: now

    @classmethod
    def from_params(cls, params: dict) -> Limits:
        rating = params.get("rating_range", [cls.rating_min, cls.rating_max])
        history = params.get("history_length", [cls.history_min, cls.history_max])
        times = params.get("timestamp_range", [cls.timestamp_min, None])
        return cls(
            max_bad_fraction=float(params.get("max_bad_fraction", cls.max_bad_fraction)),
            rating_min=float(rating[0]),
            rating_max=float(rating[1]),
            history_min=int(history[0]),
            history_max=int(history[1]),
            timestamp_min=to_unix_seconds(times[0]) or 0,  # null: no lower bound
            timestamp_max=to_unix_seconds(times[1]),
        )

    @property
    def latest_timestamp(self) -> int:
        return self.timestamp_max or int(datetime.now(tz=UTC).timestamp())


@dataclass(frozen=True)
class Rule:
    """A row-level rule: its name, the source column it is about, and its expectation."""

    name: str
    column: str
    expectation: Callable[[], object]  # builds a fresh gx expectation


@dataclass
class FileValidation:
    """One file's validation outcome."""

    source: str
    rows: int
    clean: pd.DataFrame
    quarantine: pd.DataFrame
    fatal: list[dict] = field(default_factory=list)
    rule_counts: dict[str, dict] = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)  # gx validation results, JSON-ready
    html: dict[str, str] = field(default_factory=dict)  # gx Data Docs pages

    @property
    def bad_rows(self) -> int:
        return int(len(self.quarantine))

    def report(self) -> dict:
        return {
            "source": self.source,
            "rows": self.rows,
            "clean_rows": int(len(self.clean)),
            "quarantined_rows": self.bad_rows,
            "success": not self.fatal,
            "fatal": self.fatal,
            "rules": self.rule_counts,
            "great_expectations": self.results,
        }


# --------------------------------------------------------------------------- rules


def _gx():
    import great_expectations as gx  # heavy import (~3 s): only when validating

    return gx


def _regex(name: str, column: str, pattern: str) -> Rule:
    return Rule(
        name,
        column,
        lambda: _gx().expectations.ExpectColumnValuesToMatchRegex(column=column, regex=pattern),
    )


def _not_null(name: str, column: str, helper: str) -> Rule:
    return Rule(
        name, column, lambda: _gx().expectations.ExpectColumnValuesToNotBeNull(column=helper)
    )


def _between(name: str, column: str, helper: str, low: float, high: float) -> Rule:
    return Rule(
        name,
        column,
        lambda: _gx().expectations.ExpectColumnValuesToBeBetween(
            column=helper, min_value=low, max_value=high
        ),
    )


def _true(name: str, column: str, helper: str) -> Rule:
    """The helper flag is True (a null flag - nothing to check - passes)."""
    return Rule(
        name,
        column,
        lambda: _gx().expectations.ExpectColumnValuesToBeInSet(column=helper, value_set=[True]),
    )


def _in_set(name: str, column: str, helper: str, values: list) -> Rule:
    return Rule(
        name,
        column,
        lambda: _gx().expectations.ExpectColumnValuesToBeInSet(column=helper, value_set=values),
    )


def catalogue_rules() -> list[Rule]:
    return [
        _regex("item_id.integer", "item_id", _INTEGER),
        Rule(
            "item_id.unique",
            "item_id",
            lambda: _gx().expectations.ExpectColumnValuesToBeUnique(column="_item_id"),
        ),
        _regex("title.non_empty", "title", _NON_BLANK),
    ]


def _target_rules(limits: Limits, item_ids: list[int]) -> list[Rule]:
    """Rules on one interaction: who, which item, when, how rated."""
    return [
        _regex("user_id.non_empty", "user_id", _NON_BLANK),
        _regex("item_id.integer", "item_id", _INTEGER),
        _in_set("item_id.in_catalogue", "item_id", "_item_id", item_ids),
        _not_null("timestamp.integer", "timestamp", "_timestamp"),
        _between(
            "timestamp.plausible",
            "timestamp",
            "_timestamp",
            limits.timestamp_min,
            limits.latest_timestamp,
        ),
    ]


def _rating_rules(limits: Limits) -> list[Rule]:
    return [
        _not_null("rating.numeric", "rating", "_rating"),
        _between("rating.range", "rating", "_rating", limits.rating_min, limits.rating_max),
    ]


def release_rules(limits: Limits, item_ids: list[int]) -> list[Rule]:
    return [
        *_target_rules(limits, item_ids),
        *_rating_rules(limits),
        _regex("item_title.non_empty", "item_title", _NON_BLANK),
        Rule(
            "item_title.matches_catalogue",
            "item_title",
            lambda: _gx().expectations.ExpectColumnPairValuesToBeEqual(
                column_A="item_title",
                column_B="_catalogue_title",
                ignore_row_if="either_value_is_missing",
            ),
        ),
        _true("history.parseable", "history_item_id", "_history_parsed"),
        _between(
            "history.length",
            "history_item_id",
            "_history_length",
            limits.history_min,
            limits.history_max,
        ),
        _true("history.aligned", "history_item_id", "_history_aligned"),
        _true("history.items_in_catalogue", "history_item_id", "_history_items_known"),
        _true("history.titles_match_catalogue", "history_item_title", "_history_titles_match"),
        _true("history.ratings_range", "history_rating", "_history_ratings_valid"),
        _true("history.timestamps_ordered", "history_timestamp", "_history_times_valid"),
    ]


def event_log_rules(limits: Limits, item_ids: list[int], has_rating: bool) -> list[Rule]:
    return [*_target_rules(limits, item_ids), *(_rating_rules(limits) if has_rating else [])]


# --------------------------------------------------------------------------- helper columns


def _integers(column: pd.Series) -> pd.Series:
    """Integer cells as float (NaN where not an integer), for expectations on numbers."""
    text = column.astype(str)
    ok = text.str.fullmatch(_INTEGER)
    return pd.to_numeric(text.where(ok), errors="coerce").astype(np.float64)


def _numbers(column: pd.Series) -> pd.Series:
    return pd.to_numeric(column.astype(str), errors="coerce").astype(np.float64)


def _target_helpers(frame: pd.DataFrame) -> pd.DataFrame:
    helpers = pd.DataFrame(index=frame.index)
    helpers["_item_id"] = _integers(frame["item_id"])
    helpers["_timestamp"] = _integers(frame["timestamp"])
    if "rating" in frame:
        helpers["_rating"] = _numbers(frame["rating"])
    return helpers


def _release_helpers(frame: pd.DataFrame, titles: dict[int, str], limits: Limits) -> pd.DataFrame:
    helpers = _target_helpers(frame)
    helpers["_catalogue_title"] = helpers["_item_id"].map(
        lambda i: titles.get(int(i)) if i == i else None
    )
    flags = [
        _history_flags(row, titles, limits)
        for row in frame[RELEASE_COLUMNS].itertuples(index=False)
    ]
    flag_frame = pd.DataFrame.from_records(flags, index=frame.index, columns=_HISTORY_FLAGS)
    return pd.concat([helpers, flag_frame.astype(object)], axis=1)


_HISTORY_FLAGS = [
    "_history_parsed",
    "_history_length",
    "_history_aligned",
    "_history_items_known",
    "_history_titles_match",
    "_history_ratings_valid",
    "_history_times_valid",
]


def _history_flags(row, titles: dict[int, str], limits: Limits) -> tuple:
    """The history facts of one release row; ``None`` where a fact cannot be checked."""
    lists = [parse_list_cell(getattr(row, c)) for c in RELEASE_COLUMNS if c.startswith("history_")]
    if any(v is None for v in lists):
        return (False, None, None, None, None, None, None)
    ids, names, ratings, times = lists
    aligned = len({len(v) for v in lists}) == 1
    if not aligned:
        return (True, len(ids), False, None, None, None, None)
    ids_ok = all(isinstance(i, int) and i in titles for i in ids)
    names_ok = all(titles.get(i) == n for i, n in zip(ids, names, strict=True)) if ids_ok else None
    ratings_ok = all(
        isinstance(r, int | float) and limits.rating_min <= r <= limits.rating_max for r in ratings
    )
    target_time = _as_int(row.timestamp)
    times_ok = (
        all(isinstance(t, int) for t in times)
        and all(a <= b for a, b in zip(times, times[1:], strict=False))
        and all(limits.timestamp_min <= t <= limits.latest_timestamp for t in times)
        and (target_time is None or not times or times[-1] <= target_time)
    )
    return (True, len(ids), True, ids_ok, names_ok, ratings_ok, times_ok)


def _as_int(cell: object) -> int | None:
    text = str(cell)
    return int(text) if re.fullmatch(_INTEGER, text) else None


# --------------------------------------------------------------------------- running suites


@functools.cache
def _context():
    """One in-memory Great Expectations context per process (no files, no progress bars)."""
    gx = _gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(project_config=config)
    return context, context.data_sources.add_pandas("raw"), itertools.count()


def _run_suite(frame: pd.DataFrame, suite_name: str, expectations: list) -> object:
    gx = _gx()
    context, source, counter = _context()
    name = f"{suite_name}_{next(counter)}"  # unique within the process-wide context
    batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch, suite=suite)
    )
    return definition.run(
        batch_parameters={"dataframe": frame}, result_format={"result_format": "COMPLETE"}
    )


def _render_html(result) -> str:
    """The Great Expectations Data Docs page for one validation result."""
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    return DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(result))


def _page_name(source: str, suite: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9]+", "_", source.rsplit("/", 1)[-1]).strip("_")
    return f"{stem}__{suite}"


def validate_file(
    raw: pd.DataFrame,
    *,
    kind: str,
    required: list[str],
    rules: Callable[[], list[Rule]],
    helpers: Callable[[pd.DataFrame], pd.DataFrame],
    limits: Limits,
) -> FileValidation:
    """Run the schema and row suites on one raw file; split it into clean and quarantined rows."""
    source = raw.attrs.get("source", kind)
    gx = _gx()
    outcome = FileValidation(
        source=source,
        rows=int(len(raw)),
        clean=_rows_only(raw.iloc[0:0]),
        quarantine=_empty_quarantine(raw),
    )

    schema = _run_suite(
        raw, f"{kind}_schema", [gx.expectations.ExpectColumnToExist(column=c) for c in required]
    )
    outcome.results.append(schema.to_json_dict())
    outcome.html[_page_name(source, "schema")] = _render_html(schema)
    missing = [r.expectation_config.kwargs["column"] for r in schema.results if not r.success]
    for column in missing:
        outcome.fatal.append(
            {
                "column": column,
                "rule": "schema.required_column",
                "message": f"{source}: required column {column!r} is missing (rule: schema.required_column)",
            }
        )
    if raw.empty:
        outcome.fatal.append(
            {
                "column": None,
                "rule": "schema.has_rows",
                "message": f"{source}: the file holds no data rows (rule: schema.has_rows)",
            }
        )
    if missing or raw.empty:
        return outcome

    raw = raw.reset_index(drop=True)
    checked = pd.concat([raw[required].astype(str), helpers(raw)], axis=1)
    row_rules = rules()
    result = _run_suite(checked, f"{kind}_rows", [rule.expectation() for rule in row_rules])
    outcome.results.append(result.to_json_dict())
    outcome.html[_page_name(source, "rows")] = _render_html(result)

    broken: dict[int, list[Rule]] = {}
    for rule, res in zip(row_rules, result.results, strict=True):
        if res.exception_info and res.exception_info.get("raised_exception"):
            raise RuntimeError(
                f"{source}: rule {rule.name} could not be evaluated: {res.exception_info['exception_message']}"
            )
        indices = [] if res.success else list(res.result.get("unexpected_index_list") or [])
        outcome.rule_counts[rule.name] = {"column": rule.column, "rows": len(indices)}
        for index in indices:
            broken.setdefault(int(index), []).append(rule)

    bad = sorted(broken)
    outcome.clean = _rows_only(raw.drop(index=bad))
    outcome.quarantine = quarantine_rows(raw, bad, broken, source)
    share = len(bad) / len(raw) if len(raw) else 0.0
    if share > limits.max_bad_fraction:
        worst = max(outcome.rule_counts.items(), key=lambda kv: kv[1]["rows"])
        outcome.fatal.append(
            {
                "column": worst[1]["column"],
                "rule": worst[0],
                "message": (
                    f"{source}: {len(bad)} of {len(raw)} rows ({share:.1%}) break row rules, above the "
                    f"allowed {limits.max_bad_fraction:.1%}; most often column {worst[1]['column']!r}, "
                    f"rule {worst[0]} ({worst[1]['rows']} rows). The rows are in the quarantine file."
                ),
            }
        )
    if bad:
        log.warning(
            "%s: %d of %d rows quarantined (%s)",
            source,
            len(bad),
            len(raw),
            _rule_summary(outcome.rule_counts),
        )
    else:
        log.info("%s: all %d rows pass %d rules", source, len(raw), len(row_rules))
    return outcome


def _rule_summary(counts: dict[str, dict]) -> str:
    return ", ".join(f"{name}: {c['rows']}" for name, c in counts.items() if c["rows"])


def _empty_quarantine(raw: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(columns=[*QUARANTINE_COLUMNS, *raw.columns])


def _rows_only(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without the raw file's line numbers: they describe the file, not the rows
    that go on (and pandas would write them into every Parquet file made from the rows)."""
    frame.attrs.pop("lines", None)
    return frame


def _line(raw: pd.DataFrame, row: int) -> int | None:
    """The 1-based line of the file on which data row ``row`` starts, as its reader recorded
    in ``attrs["lines"]``; None for a frame read from no lines (Parquet, built in memory)."""
    lines = raw.attrs.get("lines")
    return lines[row] if lines is not None and len(lines) == len(raw) else None


def quarantine_rows(
    raw: pd.DataFrame, bad: list[int], broken: dict[int, list[Rule]], source: str
) -> pd.DataFrame:
    if not bad:
        return _empty_quarantine(raw)
    rows = raw.loc[bad].copy()
    rows.insert(0, "columns", [";".join(dict.fromkeys(r.column for r in broken[i])) for i in bad])
    rows.insert(0, "rules", [";".join(r.name for r in broken[i]) for i in bad])
    rows.insert(0, "source_line", pd.array([_line(raw, i) for i in bad], dtype="Int64"))
    rows.insert(0, "source_row", bad)  # 0-based data row
    rows.insert(0, "source_file", source)
    return _rows_only(rows.reset_index(drop=True))


# --------------------------------------------------------------------------- the three inputs


def validate_catalogue(raw: pd.DataFrame, limits: Limits) -> FileValidation:
    """``items.txt``: ``title<TAB>item_id``, integer unique ids, non-empty titles."""
    outcome = validate_file(
        raw,
        kind="catalogue",
        required=CATALOGUE_COLUMNS,
        rules=catalogue_rules,
        helpers=lambda frame: pd.DataFrame({"_item_id": _integers(frame["item_id"])}),
        limits=limits,
    )
    if outcome.fatal:
        return outcome
    clean = outcome.clean
    outcome.clean = pd.DataFrame(
        {
            "item_id": clean["item_id"].astype(str).str.strip().astype(np.int64),
            "title": clean["title"].astype(str),
        }
    )
    return outcome


def validate_release_rows(
    raw: pd.DataFrame, catalogue: pd.DataFrame, limits: Limits
) -> FileValidation:
    """A release split (``valid.csv`` / ``test.csv``): targets, ratings, times and histories."""
    titles = dict(zip(catalogue["item_id"].astype(int), catalogue["title"], strict=True))
    return validate_file(
        raw,
        kind="interactions",
        required=RELEASE_COLUMNS,
        rules=lambda: release_rules(limits, sorted(titles)),
        helpers=lambda frame: _release_helpers(frame, titles, limits),
        limits=limits,
    )


def validate_event_log(
    raw: pd.DataFrame, catalogue: pd.DataFrame, limits: Limits
) -> FileValidation:
    """A generic event log (``user_id, item_id, timestamp[, rating]``)."""
    has_rating = "rating" in raw.columns
    required = [*EVENT_LOG_COLUMNS, *(["rating"] if has_rating else [])]
    item_ids = sorted(catalogue["item_id"].astype(int))
    outcome = validate_file(
        raw,
        kind="event_log",
        required=required,
        rules=lambda: event_log_rules(limits, item_ids, has_rating),
        helpers=_target_helpers,
        limits=limits,
    )
    if outcome.fatal:
        return outcome
    clean = outcome.clean
    outcome.clean = clean.assign(
        item_id=clean["item_id"].astype(str).str.strip().astype(np.int64),
        timestamp=clean["timestamp"].astype(str).str.strip().astype(np.int64),
        **({"rating": clean["rating"].astype(np.float64)} if has_rating else {}),
    )
    return outcome


def combined_report(outcomes: list[FileValidation], limits: Limits) -> dict:
    """One JSON-ready report over several files."""
    return {
        "success": all(not o.fatal for o in outcomes),
        "validated_at": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "max_bad_fraction": limits.max_bad_fraction,
        "files": {o.source: o.report() for o in outcomes},
    }


def raise_if_fatal(report: dict) -> None:
    """Stop with every fatal finding of a ``combined_report``: file, column and rule each."""
    messages = [finding["message"] for f in report["files"].values() for finding in f["fatal"]]
    if messages:
        raise fatal_error(messages)


def fatal_error(messages: list[str], then: str = "") -> DataValidationError:
    """The error stopping a run on fatal findings (one message each), and what happened then."""
    return DataValidationError(
        "Input validation failed:\n  " + "\n  ".join(messages) + (f"\n{then}" if then else "")
    )
