"""Every validation rule rejects a crafted bad row, which is quarantined (not dropped)."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from helpers import PROJECT
from rere_pipeline import validation
from rere_pipeline.datasets import SourceCSVDataset
from rere_pipeline.mlops.retrain import KNOWN_TITLE_RULE

LIMITS = validation.Limits(max_bad_fraction=1.0)  # row rules only; file-level limits tested below
GOOD_ROWS = 50


def _shift_history(row: pd.Series, column: str, value: str) -> dict:
    """Replace the first element of a history list cell (as text)."""
    cell = row[column]
    return {column: "[" + value + cell[cell.index(",") if "," in cell else cell.index("]") :]}


# rule name -> how to break one good raw row (cells are text, as read from the CSV)
RELEASE_CASES = {
    "user_id.non_empty": lambda r: {"user_id": "   "},
    "item_id.integer": lambda r: {"item_id": "12a"},
    "item_id.in_catalogue": lambda r: {"item_id": "999999"},
    "timestamp.integer": lambda r: {"timestamp": "2017-05-19"},
    "timestamp.plausible": lambda r: {"timestamp": "4102444800"},  # 2100-01-01
    "rating.numeric": lambda r: {"rating": "five"},
    "rating.range": lambda r: {"rating": "7.0"},
    "item_title.non_empty": lambda r: {"item_title": ""},
    "item_title.matches_catalogue": lambda r: {"item_title": "A title that is not this item's"},
    "history.parseable": lambda r: {"history_item_id": "__import__('os').system('false')"},
    "history.length": lambda r: dict.fromkeys(
        ["history_item_id", "history_item_title", "history_rating", "history_timestamp"], "[]"
    ),
    "history.aligned": lambda r: {"history_rating": r["history_rating"][:-1] + ", 5.0]"},
    "history.items_in_catalogue": lambda r: _shift_history(r, "history_item_id", "999999"),
    "history.titles_match_catalogue": lambda r: _shift_history(
        r, "history_item_title", "'Not the title'"
    ),
    "history.ratings_range": lambda r: _shift_history(r, "history_rating", "9.0"),
    "history.timestamps_ordered": lambda r: _shift_history(r, "history_timestamp", "4000000000"),
}


@pytest.fixture(scope="module")
def catalogue(raw_release):
    return validation.validate_catalogue(raw_release["items"], LIMITS).clean


def _with_bad_row(raw: pd.DataFrame, change: dict) -> pd.DataFrame:
    frame = raw.iloc[:GOOD_ROWS].copy()
    # a row with a history of at least 2 events, so that every history rule can be broken
    victim = raw[raw["history_item_id"].str.count(",") >= 1].iloc[0].copy()
    for column, value in change(victim).items():
        victim[column] = value
    frame = pd.concat([frame, victim.to_frame().T], ignore_index=True)
    frame.attrs["source"] = "data/01_raw/amazon-industrial/valid.csv.gz"
    return frame


def test_every_release_rule_has_a_case(catalogue):
    names = {rule.name for rule in validation.release_rules(LIMITS, sorted(catalogue["item_id"]))}
    assert names == set(RELEASE_CASES)


@pytest.mark.parametrize("rule", sorted(RELEASE_CASES))
def test_release_rule_quarantines_the_bad_row(rule, raw_release, catalogue):
    frame = _with_bad_row(raw_release["valid"], RELEASE_CASES[rule])
    outcome = validation.validate_release_rows(frame, catalogue, LIMITS)

    assert len(outcome.clean) == GOOD_ROWS, "only the crafted row is rejected"
    assert len(outcome.quarantine) == 1, "the rejected row is kept, not dropped"
    row = outcome.quarantine.iloc[0]
    assert row["source_file"] == "data/01_raw/amazon-industrial/valid.csv.gz"
    assert row["source_row"] == GOOD_ROWS
    assert pd.isna(row["source_line"]), "a frame built in memory has no lines to point at"
    assert rule in row["rules"].split(";")
    assert outcome.rule_counts[rule]["rows"] == 1
    assert not outcome.fatal  # within max_bad_fraction
    # the original cells travel with the quarantined row
    assert row["user_id"] == frame.iloc[GOOD_ROWS]["user_id"]


def test_seed_release_passes_every_rule(raw_release, catalogue):
    for split in ("valid", "test"):
        outcome = validation.validate_release_rows(
            raw_release[split], catalogue, validation.Limits()
        )
        assert outcome.bad_rows == 0 and not outcome.fatal
        assert len(outcome.clean) == len(raw_release[split])


CATALOGUE_CASES = {
    "item_id.integer": {"item_id": "x17"},
    "item_id.unique": {"item_id": "0"},  # id 0 is already taken
    "title.non_empty": {"title": " "},
}


@pytest.mark.parametrize("rule", sorted(CATALOGUE_CASES))
def test_catalogue_rule_quarantines_the_bad_line(rule, raw_release):
    items = raw_release["items"].iloc[:100].copy()
    bad = pd.DataFrame([{"title": "A new item", "item_id": "100", **CATALOGUE_CASES[rule]}])
    items = pd.concat([items, bad], ignore_index=True)
    items.attrs["source"] = "items.txt.gz"
    outcome = validation.validate_catalogue(items, LIMITS)
    quarantined = outcome.quarantine[outcome.quarantine["rules"].str.contains(rule, regex=False)]
    assert 100 in quarantined["source_row"].tolist()
    assert 100 not in outcome.clean.index  # clean keeps the file's row numbers
    assert len(outcome.clean) + outcome.quarantine["source_row"].nunique() == len(items)


def test_source_line_is_where_the_row_starts_in_the_file(tmp_path, raw_release, catalogue):
    """Blank and whitespace-only lines (which pandas skips) and a quoted cell spanning lines
    come before the bad rows: ``source_line`` still names the line each starts on."""
    test_lines, item_lines = raw_release["test"].attrs["lines"], raw_release["items"].attrs["lines"]
    assert test_lines.tolist() == list(range(2, len(raw_release["test"]) + 2))
    assert item_lines.tolist() == list(range(1, len(raw_release["items"]) + 1))

    good = raw_release["valid"].iloc[:3]
    spanning = _with_bad_row(good, lambda r: {"item_title": "A title\nover two lines"})
    late = _with_bad_row(good, lambda r: {"rating": "7.0"}).iloc[[-1]]
    text = spanning.to_csv(index=False) + "\n   \n" + late.to_csv(index=False, header=False)
    path = tmp_path / "valid.csv"
    path.write_text(text)
    raw = SourceCSVDataset(
        filepath=str(path), load_args={"dtype": str, "keep_default_na": False}
    ).load()
    outcome = validation.validate_release_rows(raw, catalogue, LIMITS)

    lines = text.splitlines()
    assert outcome.quarantine["source_row"].tolist() == [3, 4]
    assert outcome.quarantine["source_line"].tolist() == [5, 9]  # 1-based; header on line 1
    assert lines[5 - 1].startswith(spanning["user_id"].iloc[3] + ",")
    assert lines[5].startswith("over two lines")  # the row's second line
    assert lines[9 - 1].startswith(late["user_id"].iloc[0] + ",")
    assert outcome.quarantine["rules"].tolist() == ["item_title.matches_catalogue", "rating.range"]
    # the lines describe the file: the rows that go on (to Parquet) do not carry them
    assert "lines" not in outcome.clean.attrs and "lines" not in outcome.quarantine.attrs
    assert "lines" in raw.attrs


def test_source_lines_of_a_byte_order_mark_and_of_separators_csv_cannot_follow(tmp_path):
    items = tmp_path / "items.txt"
    items.write_bytes("\ufeffA title\t1\n\nB title\t2\n".encode())  # BOM, no header
    args = {"sep": "\t", "header": None, "names": ["title", "item_id"], "quoting": 3, "dtype": str}
    frame = SourceCSVDataset(filepath=str(items), load_args=args).load()
    assert frame["title"].tolist() == ["A title", "B title"]
    assert frame.attrs["lines"].tolist() == [1, 3]
    # a regex separator (pandas' python engine): the frame loads, its lines are unknown
    sniffed = SourceCSVDataset(
        filepath=str(items), load_args={**args, "sep": r"\t+", "engine": "python"}
    ).load()
    assert sniffed["item_id"].tolist() == ["1", "2"] and sniffed.attrs["lines"] is None


@pytest.mark.parametrize("item_id", ["\uff13", "9" * 20])  # a full-width 3; past int64
def test_an_id_is_ascii_digits_that_fit_int64(item_id, raw_release, catalogue):
    items = raw_release["items"].iloc[:100].copy()
    items.loc[100] = ["A new item", item_id]
    items.attrs["source"] = "items.txt.gz"
    outcome = validation.validate_catalogue(items, LIMITS)
    assert outcome.quarantine["source_row"].tolist() == [100]
    assert outcome.quarantine["rules"].item() == "item_id.integer"
    assert outcome.clean["item_id"].tolist() == items["item_id"].iloc[:100].astype(int).tolist()

    frame = _with_bad_row(raw_release["valid"], lambda r: {"item_id": item_id})
    outcome = validation.validate_release_rows(frame, catalogue, LIMITS)
    assert outcome.quarantine["source_row"].tolist() == [GOOD_ROWS]
    assert "item_id.integer" in outcome.quarantine["rules"].item().split(";")
    assert len(outcome.clean) == GOOD_ROWS


def test_event_log_rules(catalogue):
    log = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "", "u2", "u2"],
            "item_id": ["1", "2", "3", "999999", "4"],
            "timestamp": ["1500000000", "1500000100", "1500000200", "1500000300", "soon"],
            "rating": ["5", "4", "3", "5", "5"],
        }
    )
    log.attrs["source"] = "data/01_raw/new_logs/week1.csv"
    outcome = validation.validate_event_log(log, catalogue, LIMITS)
    assert outcome.clean["item_id"].tolist() == [1, 2]
    assert outcome.quarantine["rules"].tolist() == [
        "user_id.non_empty",
        "item_id.in_catalogue",
        "timestamp.integer",
    ]


def test_missing_column_is_fatal_and_names_file_column_rule(raw_release, catalogue):
    frame = raw_release["test"].drop(columns=["rating"])
    frame.attrs["source"] = "data/01_raw/amazon-industrial/test.csv.gz"
    outcome = validation.validate_release_rows(frame, catalogue, LIMITS)
    report = validation.combined_report([outcome], LIMITS)
    assert report["success"] is False
    with pytest.raises(validation.DataValidationError) as error:
        validation.raise_if_fatal(report)
    assert (
        "data/01_raw/amazon-industrial/test.csv.gz: required column 'rating' is missing (rule: schema.required_column)"
        in str(error.value)
    )


def test_a_file_without_data_rows_is_fatal(raw_release, catalogue):
    frame = raw_release["valid"].iloc[:0]  # the header alone
    frame.attrs["source"] = "valid.csv.gz"
    outcome = validation.validate_release_rows(frame, catalogue, LIMITS)
    with pytest.raises(
        validation.DataValidationError,
        match=re.escape("valid.csv.gz: the file holds no data rows (rule: schema.has_rows)"),
    ):
        validation.raise_if_fatal(validation.combined_report([outcome], LIMITS))


def test_open_timestamp_bounds_mean_any_time_and_now():
    limits = validation.Limits.from_params({"timestamp_range": [None, None]})
    assert limits.timestamp_min == 0 and limits.timestamp_max is None
    assert limits.latest_timestamp > 1_700_000_000
    dated = validation.Limits.from_params({"timestamp_range": ["2000-01-01", "2001-01-01"]})
    assert (dated.timestamp_min, dated.timestamp_max) == (946_684_800, 978_307_200)


def test_too_many_bad_rows_is_fatal(raw_release, catalogue):
    frame = raw_release["valid"].iloc[:100].copy()
    frame.loc[:9, "rating"] = "11"  # 10% of rows
    frame.attrs["source"] = "valid.csv.gz"
    outcome = validation.validate_release_rows(
        frame, catalogue, validation.Limits(max_bad_fraction=0.05)
    )
    assert outcome.bad_rows == 10 and len(outcome.quarantine) == 10
    with pytest.raises(
        validation.DataValidationError,
        match=re.escape(
            "valid.csv.gz: 10 of 100 rows (10.0%) break row rules, above the allowed 5.0%; most often column 'rating', rule rating.range"
        ),
    ):
        validation.raise_if_fatal(validation.combined_report([outcome], LIMITS))


def test_report_is_json_ready_and_data_docs_render(raw_release, catalogue):
    import json

    outcome = validation.validate_release_rows(raw_release["valid"].iloc[:20], catalogue, LIMITS)
    json.dumps(validation.combined_report([outcome], LIMITS))
    assert set(outcome.html) == {"valid_csv_gz__schema", "valid_csv_gz__rows"}
    assert all("<html" in page.lower() and "Expectation" in page for page in outcome.html.values())


def test_readme_documents_every_rule(catalogue):
    readme = (PROJECT / "README.md").read_text()
    rules = [
        *validation.release_rules(LIMITS, [0]),
        *validation.catalogue_rules(),
        *validation.event_log_rules(LIMITS, [0], has_rating=True),
    ]
    names = {r.name for r in rules} | {"schema.required_column", "schema.has_rows", "readable_csv"}
    names.add(KNOWN_TITLE_RULE)  # the retrain's one rule of its own
    missing = sorted(name for name in names if f"`{name}`" not in readme)
    assert not missing, f"README's validation table lacks {missing}"
