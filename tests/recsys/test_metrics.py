"""HR@K / NDCG@K against hand-computed cases."""

import math

import numpy as np
import pytest

from rere_pipeline.recsys.metrics import (
    check_depth,
    check_ranking_depth,
    hit_rank,
    ndcg_per_row,
    paired_bootstrap_ratio,
    ranking_metrics,
    titles_by_first_occurrence,
)


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


def test_per_row_ndcg_averages_to_ranking_metrics():
    ranked = [["a", "b", "c"], ["x", "y", "z"], ["q", "t", "r"], ["m", "n", "o"]]
    targets = ["b", "z", "missing", "m"]
    rows = ndcg_per_row(ranked, targets, k=2)
    assert rows.tolist() == pytest.approx([1 / math.log2(3), 0.0, 0.0, 1.0])
    assert rows.mean() == pytest.approx(ranking_metrics(ranked, targets, ks=(2,))["NDCG@2"])


def test_paired_bootstrap_of_a_model_against_itself_has_no_spread():
    values = np.random.default_rng(1).random(200)
    same = paired_bootstrap_ratio(values, values, samples=200)
    assert same == {"ratio": 1.0, "low": 1.0, "high": 1.0, "above_1": 0.0}
    # a model 1.5x better on every row is 1.5x in every resample: pairing removes row noise
    scaled = paired_bootstrap_ratio(1.5 * values, values, samples=200)
    assert scaled["low"] == pytest.approx(1.5) and scaled["high"] == pytest.approx(1.5)
    assert scaled["above_1"] == 1.0


def test_paired_bootstrap_interval_widens_with_row_noise_and_is_seeded():
    rng = np.random.default_rng(2)
    base = rng.random(500)
    noisy = base * rng.uniform(0.5, 1.7, size=500)  # ~1.1x on average, row by row noisy
    first = paired_bootstrap_ratio(noisy, base, samples=300, seed=3)
    assert first["low"] < first["ratio"] < first["high"]
    assert first["ratio"] == pytest.approx(noisy.mean() / base.mean())
    assert 0.0 < first["above_1"] <= 1.0
    assert paired_bootstrap_ratio(noisy, base, samples=300, seed=3) == first
    fewer = paired_bootstrap_ratio(noisy[:50], base[:50], samples=300, seed=3)
    assert fewer["high"] - fewer["low"] > first["high"] - first["low"]


def test_paired_bootstrap_needs_rows_in_pairs():
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_bootstrap_ratio(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_bootstrap_ratio(np.ones(0), np.ones(0))


def test_a_k_above_the_beam_width_is_refused_not_capped():
    check_depth(20, 20, "evaluate.ks")
    with pytest.raises(ValueError, match=r"evaluate.ks: K = 20 is above the beam width 5"):
        check_depth(20, 5, "evaluate.ks")
    good = {"evaluate": {"ks": [1, 10, 20], "beam_width": 20}, "rere": {"eval_beam_width": 10}}
    check_ranking_depth(good)
    check_ranking_depth({})  # nothing to check
    with pytest.raises(ValueError, match="evaluate.ks: K = 20"):
        check_ranking_depth({**good, "evaluate": {"ks": [1, 20], "beam_width": 16}})
    with pytest.raises(ValueError, match=r"rere.eval_beam_width \(valid NDCG@10\): K = 10"):
        check_ranking_depth({**good, "rere": {"eval_beam_width": 8}})


def test_every_k_the_reports_read_is_scored():
    """Each would fail after the whole evaluation: a KeyError in the report or the registry, or
    an NDCG@k silently cut to the titles a model kept."""
    sasrec = {"ks": [1, 10, 20], "predictions_k": 20}
    good = {
        "evaluate": {"ks": [1, 10], "beam_width": 20, "compare": {"k": 10}},
        "baselines": {"sasrec": {"eval": sasrec}},
    }
    check_ranking_depth(good)
    bad = {
        "evaluate.ks \\[1, 5\\] lacks 10: the registry": {"ks": [1, 5]},
        "baselines.sasrec.eval.ks lacks \\[50\\]": {"ks": [1, 10, 50], "beam_width": 50},
        "evaluate.compare.k: K = 30 is above the beam width 20": {"compare": {"k": 30}},
    }
    for message, change in bad.items():
        with pytest.raises(ValueError, match=message):
            check_ranking_depth({**good, "evaluate": {**good["evaluate"], **change}})
    unset = {"baselines": {"sasrec": {"eval": {"predictions_k": 30}}}}  # scored at DEFAULT_KS
    with pytest.raises(ValueError, match="baselines.sasrec.eval.ks lacks \\[30\\]"):
        check_ranking_depth(
            {**unset, "evaluate": {**good["evaluate"], "ks": [1, 10, 30], "beam_width": 30}}
        )
    small = {"baselines": {"sasrec": {"eval": {**sasrec, "predictions_k": 5}}}}
    with pytest.raises(ValueError, match="compare.k: K = 10 is above .*predictions_k = 5"):
        check_ranking_depth({**good, **small})
