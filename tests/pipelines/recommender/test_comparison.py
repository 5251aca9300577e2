"""`compare_models`: paired ratios, the repeat / new-item slices and the target-popularity
slices on hand-made predictions."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from rere_pipeline.pipelines.evaluate.nodes import (
    compare_models,
    markdown_table,
    mlflow_metrics,
    popularity_labels,
)

PARAMS = {
    "ks": [1, 10],
    "compare": {"k": 10, "bootstrap_samples": 200, "pairs": [["rere", "sft"], ["rere", "sasrec"]]},
}


# Train targets: C is the target of 3 train rows, D of one, A and B of none.
TRAIN = pd.DataFrame({"item_title": ["C", "C", "C", "D"]})


@pytest.fixture
def test_rows():
    return pd.DataFrame(
        {
            "user_id": ["u0", "u1", "u2", "u3"],
            "item_id": [10, 11, 12, 13],
            "item_title": ["A", "B", "C", "D"],
            # u1 buys B again: its history already holds the target
            "history_item_title": [["X"], ["B", "Y"], ["Z"], ["X", "Y"]],
        }
    )


def lm_predictions(test_rows, rows, titles):
    """An LM's predictions as evaluate_lm writes them: test rows (by position) and one valid
    row (the valid split here holds the same rows as test)."""
    picked = test_rows.iloc[rows]
    test = pd.DataFrame(
        {
            "model": "lm",
            "split": "test",
            "row": rows,
            "user_id": picked["user_id"].values,
            "target_item_id": picked["item_id"].values,
            "target_title": picked["item_title"].values,
            "titles": titles,
        }
    )
    valid = test.iloc[:1].assign(split="valid", row=0, titles=[["A"]])
    return pd.concat([valid, test], ignore_index=True)


def sasrec_predictions(test_rows, titles, rows=None, split="test"):
    """SASRec's predictions for ``rows`` (positions in the ``split``; all by default)."""
    picked = test_rows.iloc[list(range(len(test_rows)) if rows is None else rows)]
    return pd.DataFrame(
        {
            "split": split,
            "row": picked.index,
            "user_id": picked["user_id"],
            "item_id": picked["item_id"],
            "item_title": picked["item_title"],
            "ranked_titles": titles,
        }
    )


def test_models_are_compared_on_the_rows_they_all_scored(test_rows):
    sft = lm_predictions(test_rows, [0, 1, 3], [["Q", "A"], ["B"], ["Q"]])
    rere = lm_predictions(test_rows, [0, 1, 3], [["A"], ["B"], ["Q", "D"]])
    sasrec = sasrec_predictions(test_rows, [["Q"], ["B"], ["C"], ["Q"]])  # scored row 2 too
    both = compare_models(test_rows, test_rows, TRAIN, PARAMS, sasrec=sasrec, sft=sft, rere=rere)
    result = both["test"]

    half = 1 / math.log2(3)  # a hit at rank 1
    assert result["rows"] == 3  # row 2 only SASRec scored
    assert result["models"] == pytest.approx(
        {"sasrec": 1 / 3, "sft": (half + 1) / 3, "rere": (1 + 1 + half) / 3}
    )
    pair = result["pairs"]["rere/sft"]
    assert pair["ratio"] == pytest.approx((2 + half) / (1 + half))
    assert pair["low"] <= pair["ratio"] <= pair["high"]
    assert result["pairs"]["rere/sasrec"]["ratio"] == pytest.approx(2 + half)
    # SASRec scored a sample of the test split (evaluate.max_rows): the rows all three share
    sampled = sasrec_predictions(test_rows, [["A"], ["Q"]], rows=[0, 3])
    on_two = compare_models(test_rows, test_rows, TRAIN, PARAMS, sasrec=sampled, sft=sft)["test"]
    assert on_two["rows"] == 2
    assert on_two["models"] == pytest.approx({"sasrec": 0.5, "sft": (half + 0) / 2})

    repeat, new = result["slices"]["history holds the target"], result["slices"]["new item"]
    assert (repeat["rows"], new["rows"]) == (1, 2)
    assert repeat["sasrec"] == repeat["sft"] == repeat["rere"] == 1.0
    assert new["sasrec"] == 0.0 and new["sft"] == pytest.approx(half / 2)
    assert repeat["share_of_hits"]["sasrec"] == 1.0
    assert repeat["share_of_hits"]["sft"] == pytest.approx(1 / (1 + half))

    table = markdown_table(
        {"sft": {"test": {"rows": 3, "HR@1": 0.1, "HR@10": 0.2, "NDCG@1": 0.1, "NDCG@10": 0.15}}},
        PARAMS,
        {"test": result},
    )
    assert f"| rere / sft | {pair['ratio']:.3f} | {pair['low']:.3f} - {pair['high']:.3f} |" in table
    assert "| history holds the target | 1 | 1.0000 (100%) |" in table
    # valid: these SASRec predictions hold test rows only, so only the LMs' pair (on their
    # one valid row)
    valid = both["valid"]
    assert valid["rows"] == 1 and set(valid["models"]) == {"sft", "rere"}
    assert list(valid["pairs"]) == ["rere/sft"] and valid["pairs"]["rere/sft"]["ratio"] == 1.0
    # SASRec's valid rows (a miss on row 0) join the valid comparison; a file without a
    # split column (written before SASRec scored valid rows) still serves test
    with_valid = pd.concat([sasrec, sasrec_predictions(test_rows, [["Q"]], [0], "valid")])
    both_splits = compare_models(
        test_rows, test_rows, TRAIN, PARAMS, sasrec=with_valid, sft=sft, rere=rere
    )
    assert both_splits["test"]["models"] == result["models"]
    assert both_splits["valid"]["models"] == {"sasrec": 0.0, "sft": 1.0, "rere": 1.0}
    assert list(both_splits["valid"]["pairs"]) == ["rere/sft", "rere/sasrec"]
    old_file = compare_models(
        test_rows, test_rows, TRAIN, PARAMS, sasrec=sasrec.drop(columns="split"), sft=sft
    )
    assert old_file["test"]["models"]["sasrec"] == pytest.approx(1 / 3)
    assert set(old_file["valid"]["models"]) == {"sft"}

    table = markdown_table({}, PARAMS, both)
    assert table.index("## test: paired comparison") < table.index("## valid: paired comparison")
    metrics = mlflow_metrics({}, both)
    assert metrics["compare.test.rere_vs_sft.ratio"]["value"] == pytest.approx(pair["ratio"])
    assert {"compare.test.rere_vs_sasrec.low", "compare.test.rere_vs_sasrec.high"} <= set(metrics)
    assert metrics["compare.valid.rere_vs_sft.ratio"]["value"] == 1.0


def test_new_item_rows_are_split_by_how_many_train_rows_have_their_target(test_rows):
    sft = lm_predictions(test_rows, [0, 1, 2, 3], [["A"], ["B"], ["Q", "C"], ["Q"]])
    rere = lm_predictions(test_rows, [0, 1, 2, 3], [["Q"], ["B"], ["C"], ["D"]])
    sasrec = sasrec_predictions(test_rows, [["Q"]] * 4)
    params = {**PARAMS, "compare": {**PARAMS["compare"], "popularity_bins": [0, 2]}}
    result = compare_models(test_rows, test_rows, TRAIN, params, sasrec=sasrec, sft=sft, rere=rere)
    popularity = result["test"]["popularity"]

    half = 1 / math.log2(3)
    # A is never a train target, D once, C three times; B (row 1) is a repeat, so in no bucket
    assert list(popularity) == ["0", "1-2", ">2"]
    assert [entry["rows"] for entry in popularity.values()] == [1, 1, 1]
    assert (popularity["0"]["sft"], popularity["0"]["rere"]) == (1.0, 0.0)
    assert (popularity["1-2"]["sft"], popularity["1-2"]["rere"]) == (0.0, 1.0)
    assert popularity[">2"]["sft"] == pytest.approx(half) and popularity[">2"]["rere"] == 1.0
    assert popularity["0"]["share_of_hits"]["sft"] == pytest.approx(1 / (2 + half))
    assert popularity["0"]["share_of_hits"]["sasrec"] is None  # SASRec never hits
    table = markdown_table({}, params, result)
    assert "| target's train rows | n | sasrec | sft | rere |" in table
    assert "| 0 | 1 | 0.0000 | 1.0000 (38%) | 0.0000 (0%) |" in table


def test_popularity_buckets_are_named_by_their_counts():
    assert popularity_labels([0, 2, 5, 10, 20]) == ["0", "1-2", "3-5", "6-10", "11-20", ">20"]
    assert popularity_labels([1, 3]) == ["0-1", "2-3", ">3"]
    for bad in ([], [2, 1], [0, 0], [-1, 3]):
        with pytest.raises(ValueError, match="popularity_bins must be increasing counts"):
            popularity_labels(bad)


def test_a_pair_whose_baseline_never_hits_has_no_ratio(test_rows):
    sft = lm_predictions(test_rows, [0, 2], [["Q"], ["Q"]])
    rere = lm_predictions(test_rows, [0, 2], [["A"], ["Q"]])
    sasrec = sasrec_predictions(test_rows, [["Q"]] * 4)
    both = compare_models(test_rows, test_rows, TRAIN, PARAMS, sasrec=sasrec, sft=sft, rere=rere)
    assert both["test"]["pairs"]["rere/sft"] == {
        "ratio": None,
        "note": "sft has no hit in the top 10",
    }
    assert "| rere / sft | - | sft has no hit in the top 10 | - |" in markdown_table(
        {}, PARAMS, both
    )
    metrics = mlflow_metrics({}, both)
    assert "compare.test.rere_vs_sft.ratio" not in metrics
    assert "compare.valid.rere_vs_sft.ratio" in metrics  # both hit their valid row


def test_predictions_of_other_rows_are_refused(test_rows):
    sft = lm_predictions(test_rows, [0, 1], [["A"], ["B"]])
    sft.loc[sft["split"] == "test", "row"] = [1, 0]  # rows swapped: users no longer match
    rere = lm_predictions(test_rows, [0, 1], [["A"], ["B"]])
    sasrec = sasrec_predictions(test_rows, [["A"]] * 4)
    with pytest.raises(ValueError, match="sft_predictions: its test rows do not match"):
        compare_models(test_rows, test_rows, TRAIN, PARAMS, sasrec=sasrec, sft=sft, rere=rere)
    with pytest.raises(ValueError, match="sasrec_predictions: its test rows do not match"):
        compare_models(
            test_rows,
            test_rows,
            TRAIN,
            PARAMS,
            sasrec=sasrec.assign(row=sasrec["row"].to_numpy()[::-1]),
            sft=rere,
            rere=rere,
        )
    other_valid = test_rows.iloc[::-1].reset_index(drop=True)
    with pytest.raises(ValueError, match="rere_predictions: its valid rows do not match"):
        compare_models(test_rows, other_valid, TRAIN, PARAMS, sasrec=sasrec, rere=rere)
    with pytest.raises(ValueError, match="no 'row' column"):
        compare_models(
            test_rows,
            test_rows,
            TRAIN,
            PARAMS,
            sasrec=sasrec,
            sft=rere.drop(columns="row"),
            rere=rere,
        )
