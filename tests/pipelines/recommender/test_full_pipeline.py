"""`kedro run --pipelines=full --env=test` end to end in a temporary copy of the project."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from helpers import latest_kedro_run, mlflow_runs, run_cli

pytestmark = pytest.mark.slow
KS = (1, 3, 5, 10)  # conf/test: evaluate.ks (at most its 10 beams)


def test_full_run_writes_models_and_the_evaluation_report(full_run):
    project, _ = full_run
    for model in ("backbone", "sft", "rere"):
        assert (project / "data/06_models" / model / "model.safetensors").exists()
    evaluation = json.loads((project / "data/08_reporting/evaluation.json").read_text())
    assert {"sft", "rere", "sasrec", "sasrec_by_id"} <= set(evaluation)
    for name in ("sft", "rere"):
        report = evaluation[name]["test"]
        assert report["split"] == "test" and report["rows"] == 24 and report["beam_width"] == 10
        assert report["valid_fraction"] == 1.0
        for k in KS:
            assert 0.0 <= report[f"NDCG@{k}"] <= report[f"HR@{k}"] <= 1.0
    table = (project / "data/08_reporting/evaluation.md").read_text()
    assert "| sft | 24 |" in table and "| rere | 24 |" in table and "| sasrec | 24 |" in table
    comparison = json.loads((project / "data/08_reporting/comparison.json").read_text())
    test, valid = comparison["test"], comparison["valid"]
    assert test["rows"] == 24  # the test rows both LMs scored (SASRec scored all)
    assert set(test["pairs"]) == {"rere/sft", "rere/sasrec", "sft/sasrec"}
    assert sum(s["rows"] for s in test["slices"].values()) == 24
    new_item_rows = test["slices"]["new item"]["rows"]
    assert sum(s["rows"] for s in test["popularity"].values()) == new_item_rows
    assert test["models"]["sft"] == pytest.approx(evaluation["sft"]["test"]["NDCG@10"])
    # SASRec's valid predictions are compared with the LMs' too, on the same rows
    assert set(valid["models"]) == {"sft", "rere", "sasrec"} and valid["rows"] == 24
    assert set(valid["pairs"]) == set(test["pairs"])
    assert valid["models"]["sasrec"] == pytest.approx(evaluation["sasrec"]["valid"]["NDCG@10"])
    assert "## valid: paired comparison (NDCG@10)" in table
    assert "## test: paired comparison (NDCG@10)" in table
    assert (project / "data/08_reporting/rere_training.png").stat().st_size > 10_000
    assert (project / "data/08_reporting/evaluation_curves.png").stat().st_size > 10_000


def test_predictions_hold_top_k_catalogue_titles_per_user(full_run):
    project, _ = full_run
    predictions = pd.read_parquet(project / "data/07_model_output/sft_predictions.parquet")
    catalogue = set(pd.read_parquet(project / "data/03_primary/catalogue.parquet")["title"])
    assert set(predictions["split"]) == {"valid", "test"}
    assert all(
        len(t) == 10 and set(t) <= catalogue and len(set(t)) == 10 for t in predictions["titles"]
    )


def test_full_run_is_tracked_in_mlflow(full_run):
    project, _ = full_run
    run = latest_kedro_run(project)
    assert run["status"] == "FINISHED"
    runs = mlflow_runs(project)
    stages = runs[runs["tags.mlflow.parentRunId"] == run["run_id"]]
    assert sorted(stages["tags.stage"]) == sorted(
        ["data", "backbone", "prompts", "sft", "baselines", "rere", "evaluate", "register"]
    )
    assert set(stages["status"]) == {"FINISHED"}
    rere_stage = stages[stages["tags.stage"] == "rere"].iloc[0]
    assert rere_stage["metrics.rere.kl"] == run["metrics.rere.kl"]
    for metric in (
        "eval.sft.test.NDCG_at_10",
        "eval.rere.test.NDCG_at_10",
        "sft.eval_loss",
        "rere.rewards/rule/mean",
        "rere.rewards/ranking/mean",
        "rere.reward_std",
        "rere.kl",
        "rere.rere/target_in_group",
        "rere.rere/distinct_items",
        "rere.valid_ndcg_at_10",
    ):
        assert f"metrics.{metric}" in run, metric
    assert run["metrics.rere.rere/train_rows"] == 32  # conf/test's rere.train_rows, unfiltered
    assert run["metrics.rere.rere/kept_step"] in {0, 2, 4}  # a scored step (eval_steps 2 of 4)
    assert run["params.sft.learning_rate"] == "0.003"


def test_ablation_trains_every_arm_per_seed_and_writes_one_table(full_run):
    project, _ = full_run
    run_cli(["kedro", "run", "--pipelines=ablation", "--env=test"], cwd=project)
    results = pd.read_csv(project / "data/08_reporting/ablation.csv")
    arms = ["sft", "rere_rule", "rere_rule_ranking", "rere_sampled", "rere_semantic"]
    assert results["arm"].drop_duplicates().tolist() == arms
    assert results.groupby("arm", sort=False).size().tolist() == [1, 2, 2, 2, 2]  # SFT: once
    assert (results["rows"] == 12).all()
    table = (project / "data/08_reporting/ablation.md").read_text()
    for arm in arms:
        assert f"| {arm} | " in table
    assert "| rere_rule | 2 |" in table and "±" in table
    # the finished rows an interrupted run would reuse are gone with the table written
    assert not (project / "data/07_model_output/ablation_progress/paper").exists()
