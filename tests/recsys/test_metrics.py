"""HR@K / NDCG@K against hand-computed cases."""

import math

import pytest

from rere_pipeline.recsys.metrics import hit_rank, ranking_metrics, titles_by_first_occurrence


def test_hand_computed_rows():
    ranked = [["a", "b", "c"], ["x", "y", "z"], ["q", "t", "r"]]
    targets = ["a", "z", "missing"]
    m = ranking_metrics(ranked, targets, ks=(1, 3))
    assert m["HR@1"] == pytest.approx(1 / 3)
    assert m["NDCG@1"] == pytest.approx(1 / 3)
    assert m["HR@3"] == pytest.approx(2 / 3)
    assert m["NDCG@3"] == pytest.approx((1.0 + 1 / math.log2(4)) / 3)


def test_rank_beyond_k_is_a_miss_and_first_occurrence_counts():
    assert hit_rank(["b", "a", "a"], "a") == 1
    m = ranking_metrics([["b", "c", "a"]], ["a"], ks=(2, 3))
    assert m["HR@2"] == 0.0 and m["NDCG@2"] == 0.0
    assert m["HR@3"] == 1.0 and m["NDCG@3"] == pytest.approx(0.5)


def test_duplicate_titles_collapse_to_one_rank():
    titles = {1: "same", 2: "same", 3: "other"}
    assert titles_by_first_occurrence([2, 1, 3], titles) == ["same", "other"]
    # by title the target sits at rank 1, not 2
    m = ranking_metrics([titles_by_first_occurrence([2, 1, 3], titles)], ["other"], ks=(2,))
    assert m["HR@2"] == 1.0


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="2 ranked lists for 1 targets"):
        ranking_metrics([["a"], ["b"]], ["a"])
