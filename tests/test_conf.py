"""Run environments: what `--env=gpu` changes about where models live, and the parameter
checks every environment passes before anything runs."""

from __future__ import annotations

import copy
import re

import pytest

from helpers import project_config
from rere_pipeline.pipelines.samples import CHOOSERS, check_samples_apart, check_samples_fit
from rere_pipeline.recsys.metrics import check_ranking_depth

MODEL_DATASET = "rere_pipeline.datasets.HFModelDataset"


def test_the_gpu_environment_loads_every_model_onto_the_gpu():
    base, gpu = project_config("base")["catalog"], project_config("gpu")["catalog"]
    models = sorted(name for name, entry in base.items() if entry.get("type") == MODEL_DATASET)
    assert models == ["backbone", "rere_model", "sft_model"]
    for name in models:
        assert base[name].get("load_args", {}).get("device", "cpu") == "cpu", name
        assert gpu[name]["load_args"]["device"] == "cuda", name
        assert gpu[name]["path"] == base[name]["path"], name  # the same files
    assert project_config("gpu")["parameters"]["backbone"]["load_args"]["device"] == "cuda"


ENVIRONMENTS = ["base", "test", "gpu", "design_space"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_environment_scores_each_k_it_reports(env):
    params = project_config(env)["parameters"]
    check_ranking_depth(params)  # what ParameterCheckHook runs before anything else
    params["evaluate"]["ks"] = [k for k in params["evaluate"]["ks"] if k != 10]
    with pytest.raises(ValueError, match="lacks 10: the registry and promotion compare"):
        check_ranking_depth(params)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_reported_valid_rows_stay_apart_from_the_rows_training_chooses_on(env):
    params = project_config(env)["parameters"]
    check_samples_apart(params)  # every committed environment passes
    chooser_paths = [("evaluate", "max_rows", "valid"), *CHOOSERS]
    params.setdefault("tune", {}).setdefault("budget", {})["valid_rows"] = 8
    for path in chooser_paths:
        for how in ("null", "left out"):
            whole = copy.deepcopy(params)
            node = whole
            for key in path[:-1]:
                node = node[key]
            if how == "null":
                node[path[-1]] = None  # the whole split, the other sample's rows included
            elif path in CHOOSERS and CHOOSERS[path]:
                del node[path[-1]]  # read with .get or [] by its node: the whole split too
            else:
                continue
            pattern = rf"^{re.escape('.'.join(path))}: null \(or left out\) means the whole valid"
            with pytest.raises(ValueError, match=pattern):
                check_samples_apart(whole)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_valid_samples_fit_in_the_valid_split_together(env, raw_release):
    params = project_config(env)["parameters"]
    check_samples_fit(params, len(raw_release["valid"]))  # the seed's split: all fit
    params = {
        "evaluate": {"max_rows": {"valid": 1000}},
        "baselines": {"sasrec": {"valid_rows": 3000}},
        "sft": {"valid_rows": 500},
        "rere": {"valid_rows": 1000},
    }
    check_samples_fit(params, 4000)  # the two ends of the permutation just meet
    with pytest.raises(
        ValueError,
        match=r"^the valid split has 3999 rows, fewer than evaluate.max_rows.valid \(1000\) plus "
        r"the rows training chooses on \(baselines.sasrec.valid_rows: 3000\)",
    ):
        check_samples_fit(params, 3999)
