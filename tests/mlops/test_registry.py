"""Registering the recommender as a pyfunc model, promotion both ways, serving over HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from rere_pipeline.mlops import registry, serving

NAME = "rere-recommender"


def register(
    tiny_backbone, small_catalogue, template, score: float, rows: str = "rows-a", **tags
) -> str:
    with mlflow.start_run():
        info = serving.log_recommender(
            tiny_backbone,
            small_catalogue,
            template,
            num_beams=5,
            batch_size=8,
            k=3,
            registered_model_name=NAME,
        )
    version = str(info.registered_model_version)
    registry.set_challenger(NAME, version, {"valid_ndcg_at_10": score, "valid_rows": rows, **tags})
    return version


def aliases() -> dict[str, str]:
    return {k: str(v) for k, v in mlflow.MlflowClient().get_registered_model(NAME).aliases.items()}


def test_logged_model_recommends_catalogue_items_from_ids_or_titles(
    mlflow_store, tiny_backbone, small_catalogue, template
):
    version = register(tiny_backbone, small_catalogue, template, 0.1)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@challenger")
    ids = small_catalogue["item_id"].tolist()
    by_id = model.predict(pd.DataFrame({"history_item_ids": [[ids[1], ids[2]], [ids[7]]]}))
    assert list(by_id.columns) == ["item_ids", "titles", "scores"] and len(by_id) == 2
    title_of = dict(zip(small_catalogue["item_id"], small_catalogue["title"], strict=True))
    for item_ids, titles, scores in by_id.itertuples(index=False):
        assert len(item_ids) == len(set(titles)) == 3
        assert [title_of[i] for i in item_ids] == list(titles)
        assert list(scores) == sorted(scores, reverse=True)
    titles = small_catalogue["title"].tolist()
    by_title = model.predict(pd.DataFrame({"history_titles": [[titles[1], titles[2]]]}))
    assert list(by_title["item_ids"][0]) == list(by_id["item_ids"][0])
    five = model.predict(pd.DataFrame({"history_item_ids": [[ids[1]]]}), params={"k": 5})
    assert len(five["titles"][0]) == 5
    with pytest.raises(ValueError, match="row 0: item ids not in the catalogue: \\[123456789\\]"):
        model.predict(pd.DataFrame({"history_item_ids": [[123456789]]}))
    details = mlflow.MlflowClient().get_model_version(NAME, version)
    assert details.tags["valid_ndcg_at_10"] == "0.1"
    assert model.metadata.signature.params.to_dict()[0]["name"] == "k"


def test_first_challenger_becomes_champion_then_only_a_better_one_replaces_it(
    mlflow_store, tiny_backbone, small_catalogue, template
):
    first = register(tiny_backbone, small_catalogue, template, 0.10)
    decision = registry.promote(NAME, margin=0.0)
    assert decision.promoted and aliases()["champion"] == first

    worse = register(tiny_backbone, small_catalogue, template, 0.09)
    decision = registry.promote(NAME, margin=0.0)
    assert not decision.promoted and aliases() == {"champion": first, "challenger": worse}
    tags = mlflow.MlflowClient().get_model_version(NAME, worse).tags
    assert tags["promotion.decision"] == "rejected" and "champion stays" in tags["promotion.reason"]

    equal = register(tiny_backbone, small_catalogue, template, 0.10)
    assert not registry.promote(NAME, margin=0.0).promoted
    assert aliases() == {"champion": first, "challenger": equal}

    within_margin = register(tiny_backbone, small_catalogue, template, 0.105)
    assert not registry.promote(NAME, margin=0.01).promoted
    assert aliases() == {"champion": first, "challenger": within_margin}

    better = register(tiny_backbone, small_catalogue, template, 0.12)
    decision = registry.promote(NAME, margin=0.01)
    assert decision.promoted and aliases() == {"champion": better, "challenger": better}
    tags = mlflow.MlflowClient().get_model_version(NAME, better).tags
    assert tags["promotion.decision"] == "promoted"
    assert tags["promotion.champion_version"] == first
    assert "beats the champion's 0.1000" in tags["promotion.reason"]
    assert not registry.promote(NAME).promoted  # already the champion: nothing moves


def test_different_valid_rows_are_rescored_on_common_rows(
    mlflow_store, tiny_backbone, small_catalogue, template
):
    champion = register(tiny_backbone, small_catalogue, template, 0.30, rows="old-split")
    registry.promote(NAME)
    challenger = register(tiny_backbone, small_catalogue, template, 0.01, rows="new-split")
    with pytest.raises(ValueError, match="different valid rows"):
        registry.promote(NAME)
    calls = []

    def rescore(uris, newer_than):
        calls.append((uris, newer_than))
        return [0.2, 0.1]  # challenger, champion on the same rows

    decision = registry.promote(NAME, rescore=rescore)
    # neither version says when its training data ends: any row may rescore them
    assert calls == [([f"models:/{NAME}/{challenger}", f"models:/{NAME}/{champion}"], None)]
    assert decision.promoted and aliases()["champion"] == challenger


def test_rescoring_rows_are_newer_than_both_models_training(
    mlflow_store, tiny_backbone, small_catalogue, template
):
    register(tiny_backbone, small_catalogue, template, 0.3, rows="a", trained_before="1000")
    registry.promote(NAME)
    register(tiny_backbone, small_catalogue, template, 0.1, rows="b", trained_before="5000")
    calls = []
    registry.promote(NAME, rescore=lambda uris, newer_than: calls.append(newer_than) or [0.2, 0.1])
    assert calls == [5000]


def test_a_retrain_challenger_is_judged_by_its_comparison_with_this_champion(
    mlflow_store, tiny_backbone, small_catalogue, template
):
    champion = register(tiny_backbone, small_catalogue, template, 0.30, rows="release")
    registry.promote(NAME)
    # scored in its cycle on the new valid window: itself 0.2, the champion 0.15
    tags = {registry.COMPARED_WITH: champion, registry.COMPARED_SCORE: "0.15"}
    challenger = register(tiny_backbone, small_catalogue, template, 0.2, rows="window", **tags)

    def rescore(uris, newer_than):
        raise AssertionError("the recorded comparison needs no rescoring")

    decision = registry.promote(NAME, rescore=rescore)
    assert (decision.challenger_score, decision.champion_score) == (0.2, 0.15)
    assert decision.promoted and aliases()["champion"] == challenger

    # compared with another champion than the one now holding the alias: rescored
    tags = {registry.COMPARED_WITH: champion, registry.COMPARED_SCORE: "0.01"}
    register(tiny_backbone, small_catalogue, template, 0.5, rows="window-2", **tags)
    calls = []
    decision = registry.promote(NAME, rescore=lambda u, n: calls.append(u) or [0.1, 0.2])
    assert len(calls) == 1 and not decision.promoted and aliases()["champion"] == challenger


def test_promote_refuses_to_rescore_a_retrain_model_on_the_rows_it_trained_on(
    mlflow_store, tiny_backbone, small_catalogue, template
):
    from rere_pipeline.pipelines.registry.nodes import promote_challenger

    titles = small_catalogue["title"].tolist()
    valid = pd.DataFrame(
        {
            "history_item_title": [[titles[1]], [titles[2]]],
            "item_title": [titles[3], titles[4]],
            "timestamp": [2000, 3000],
        }
    )
    evaluate_params = {"max_rows": {"valid": None}}
    release = register(tiny_backbone, small_catalogue, template, 0.3, "a", trained_before="2000")
    registry.promote(NAME)
    # a model of the same release on other rows: both rescored on the whole valid split
    register(tiny_backbone, small_catalogue, template, 0.1, "b", trained_before="2000")
    decision = promote_challenger(valid, {"model_name": NAME}, evaluate_params)
    assert decision["challenger_score"] == decision["champion_score"]  # the same weights
    assert not decision["promoted"] and aliases()["champion"] == release
    # a model trained on events up to after the valid period: no row can judge it here
    register(tiny_backbone, small_catalogue, template, 0.9, "c", trained_before="4000")
    with pytest.raises(ValueError, match="none of the 2 rows of data/05_model_input/valid"):
        promote_challenger(valid, {"model_name": NAME}, evaluate_params)
    assert aliases()["champion"] == release


def test_score_models_ranks_with_each_model_on_the_same_rows(
    mlflow_store, tiny_backbone, small_catalogue, template
):
    register(tiny_backbone, small_catalogue, template, 0.1)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@challenger")
    titles = small_catalogue["title"].tolist()
    histories = [[titles[1]], [titles[2], titles[3]]]
    top = model.predict(pd.DataFrame({"history_titles": histories}), params={"k": 10})["titles"]
    rows = pd.DataFrame(
        {"history_item_title": histories, "item_title": [top[0][0], "not recommended"]}
    )
    [score] = serving.score_models([f"models:/{NAME}@challenger"], rows, k=10)
    assert score == pytest.approx(0.5)  # row 0 hit at rank 0, row 1 missed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_champion_is_served_over_http(mlflow_store, tiny_backbone, small_catalogue, template):
    register(tiny_backbone, small_catalogue, template, 0.1)
    registry.promote(NAME)
    port = _free_port()
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [str(bindir / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion"]
        + ["--host", "127.0.0.1", "--port", str(port), "--env-manager", "local"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, "mlflow models serve exited"
                assert time.monotonic() < deadline, "server did not come up in 120 s"
                time.sleep(1)
        ids = small_catalogue["item_id"].tolist()
        body = {"dataframe_records": [{"history_item_ids": [ids[1], ids[2]]}], "params": {"k": 4}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    [prediction] = answer["predictions"]
    assert len(prediction["item_ids"]) == len(set(prediction["titles"])) == 4
    assert set(prediction["item_ids"]) <= set(ids)


def test_a_model_is_not_registered_with_the_scores_of_other_weights(tiny_backbone):
    from rere_pipeline.pipelines.registry.nodes import register_challenger

    valid = {"NDCG@10": 0.1, "rows_fingerprint": "f", "rows": 5, "weights_sha256": "0" * 64}
    params = {"model": "rere", "model_name": "never-registered"}
    with pytest.raises(ValueError, match="scored other weights than the rere model"):
        register_challenger(
            tiny_backbone, tiny_backbone, None, None, {"rere": {"valid": valid}}, params, {}, {}
        )


def test_only_a_missing_model_or_alias_reads_as_no_champion(mlflow_store, monkeypatch):
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    assert registry.version_by_alias(client, NAME, "champion") is None  # no such model
    client.create_registered_model(NAME)
    assert registry.version_by_alias(client, NAME, "champion") is None  # no such alias

    def failing(*args, **kwargs):  # the store itself failed (or a query was interrupted)
        raise MlflowException("database is locked", error_code="INTERNAL_ERROR")

    monkeypatch.setattr(mlflow.MlflowClient, "get_model_version_by_alias", failing)
    with pytest.raises(MlflowException, match="database is locked"):
        registry.version_by_alias(client, NAME, "champion")
    with pytest.raises(MlflowException, match="database is locked"):
        registry.promote(NAME)  # not "no champion yet": nothing is promoted unchecked
