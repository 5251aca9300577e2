"""The ablation's arms: built from the ReRe parameters, checked before any of them trains."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from helpers import project_config
from rere_pipeline.pipelines.ablation import nodes as ablation
from rere_pipeline.pipelines.rere.nodes import check_params
from rere_pipeline.recsys.backbone import Backbone


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"init": "random"}, "rere.init must be one of"),
        ({"row_order": "newest"}, "rere.row_order must be one of"),
        ({"sampling": "top_k"}, "rere.sampling must be one of"),
        ({"objective": "ppo"}, "rere.objective must be one of"),
        ({"rewards": {"rule": 1.0, "clicks": 1.0}}, "unknown reward"),
        ({"rewards": {"rule": 0}}, "at least one reward"),
        ({"keep_best_confidence": 1.0}, r"keep_best_confidence must be in \[0, 1\)"),
        ({"num_iterations": 0}, "rere.num_iterations must be at least 1"),
    ],
)
def test_an_unknown_choice_is_refused_by_name(overrides, message):
    params = {"rewards": {"rule": 1.0, "ranking": 1.0}}
    check_params(params)  # the defaults of every choice pass
    with pytest.raises(ValueError, match=message):
        check_params({**params, **overrides})


def test_a_mistyped_arm_stops_the_ablation_before_the_first_arm_trains(monkeypatch):
    def work(*args, **kwargs):
        raise AssertionError("an arm ran before every arm was checked")

    monkeypatch.setattr(ablation, "reinforce", work)
    monkeypatch.setattr(ablation, "evaluate_lm", work)
    params = {
        "seeds": [0, 1],
        "budget": {"max_steps": 5},
        "arm_set": "mine",
        "arm_sets": {
            "mine": {"sft": None, "good": {}, "typo": {"sampling": "beams"}},
            "other": {"unused": {}},
        },
    }
    rere_params = {"output_dir": "ckpt", "rewards": {"rule": 1.0}, "max_steps": 100}
    runs = ablation.arm_runs(rere_params, params)
    assert [(arm, seed) for arm, seed, _ in runs] == [
        ("sft", 0),
        ("good", 0),
        ("good", 1),
        ("typo", 0),
        ("typo", 1),
    ]
    assert runs[2][2] == {**rere_params, "max_steps": 5, "seed": 1, "output_dir": "ckpt_good_1"}
    for seeds in ([0, 0], [], None):  # a repeated seed would fake a spread over seeds
        with pytest.raises(ValueError, match="ablation.seeds must be distinct seeds"):
            ablation.arm_runs(rere_params, {**params, "seeds": seeds})
    models = [None] * 8  # never reached: the check comes first
    with pytest.raises(ValueError, match="rere.sampling must be one of"):
        ablation.run_ablation(*models, rere_params, params, {"ks": [10]}, {})


@pytest.mark.parametrize("env", ["base", "design_space"])
def test_the_committed_ablation_arms_are_valid(env):
    conf, base = project_config(env), project_config("base")
    parameters = conf["parameters"]["ablation"]
    runs = ablation.arm_runs(conf["parameters"]["rere"], parameters)
    ran = {arm for arm, _, _ in runs}
    assert ran == set(parameters["arm_sets"][parameters["arm_set"]])
    for other, arms in parameters["arm_sets"].items():  # no arm of another set runs
        if other != parameters["arm_set"]:
            assert not (ran & set(arms)) - {"sft"}
    for _, _, arm_params in runs:
        if arm_params is not None:
            check_params(arm_params)
    if env != "base":  # a sweep writes beside the base ablation, not over it
        assert parameters["arm_set"] == env
        for name in ("ablation_results", "ablation_table"):
            path = conf["catalog"][name]["dataset"]["filepath"]
            assert path != base["catalog"][name]["dataset"]["filepath"]


def test_the_table_shows_a_spread_only_over_several_seeds():
    results = pd.DataFrame(
        {
            "arm": ["sft", "rere", "rere"],
            "seed": [0, 0, 1],
            "rows": [10, 10, 10],
            "HR@10": [0.5, 0.25, 0.75],
            "NDCG@10": [0.25, 0.125, 0.375],
        }
    )
    table = ablation.ablation_table(results, [10])
    assert "| sft | 1 | 0.5000 | 0.2500 |" in table
    assert "| rere | 2 | 0.5000 ± 0.3536 | 0.2500 ± 0.1768 |" in table


def test_a_stopped_ablation_reuses_the_rows_it_finished_and_trains_the_rest(monkeypatch, tmp_path):
    trained, stop_at = [], [3]

    def reinforce(sft_model, *args, **kwargs):
        params = args[6]
        if len(trained) + 1 == stop_at[0]:
            raise KeyboardInterrupt  # stopped while training this arm
        trained.append((params["output_dir"], params["seed"]))
        return sft_model, {}, None

    def evaluate_lm(arm, *args, **kwargs):
        return {arm: {"test": {"rows": 4, "HR@10": 0.5, "NDCG@10": 0.1 * len(trained)}}}, None

    monkeypatch.setattr(ablation, "reinforce", reinforce)
    monkeypatch.setattr(ablation, "evaluate_lm", evaluate_lm)
    model = Backbone(None, torch.nn.Linear(2, 2))
    frame = pd.DataFrame({"input_ids": [[1, 2], [3]]})
    params = {
        "seeds": [0, 1],
        "arm_set": "mine",
        "arm_sets": {"mine": {"sft": None, "a": {}, "b": {"beta": 0.1}}},
        "progress_dir": str(tmp_path / "progress"),
    }
    rere_params = {"output_dir": "ckpt", "rewards": {"rule": 1.0}}

    def run(**changes):
        inputs = [model, model, frame, frame, frame, frame, None, frame]
        results, table = ablation.run_ablation(
            *inputs, rere_params, {**params, **changes}, {"ks": [10]}, {}
        )
        ablation.clear_progress(results, table, params)  # the node after, once both are saved
        return results, table

    with pytest.raises(KeyboardInterrupt):
        run()
    assert trained == [("ckpt_a_0", 0), ("ckpt_a_1", 1)]  # then stopped in b, seed 0
    assert sorted(p.name for p in (tmp_path / "progress/mine").iterdir()) == [
        "a_0.json",
        "a_1.json",
        "sft_0.json",
    ]
    (tmp_path / "progress/mine/b_1.json").write_text('{"stamp": "ab')  # cut short: not reused
    stop_at[0] = None
    results, _ = run()
    assert trained == [("ckpt_a_0", 0), ("ckpt_a_1", 1), ("ckpt_b_0", 0), ("ckpt_b_1", 1)]
    # the rows of the first run are its own, not recomputed
    assert results["NDCG@10"].round(2).tolist() == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert not (tmp_path / "progress/mine").exists()  # done: the next run trains every arm

    trained.clear()
    stop_at[0] = 2
    with pytest.raises(KeyboardInterrupt):
        run()
    stop_at[0] = None
    run(budget={"max_steps": 7})  # other parameters: nothing kept is reused
    assert trained == [
        ("ckpt_a_0", 0),
        ("ckpt_a_0", 0),
        ("ckpt_a_1", 1),
        ("ckpt_b_0", 0),
        ("ckpt_b_1", 1),
    ]
