"""Registering the recommender as a pyfunc model, promotion both ways, serving over HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.pyfunc.scoring_server import invocations

from rere_pipeline.mlops import registry, serving

NAME = "rere-recommender"


def log_version(tiny_backbone, small_catalogue, template) -> str:
    """A new registered version of the recommender, with no tags and no alias."""
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
    return str(info.registered_model_version)


def register(
    tiny_backbone, small_catalogue, template, score: float, rows: str = "rows-a", **tags
) -> str:
    version = log_version(tiny_backbone, small_catalogue, template)
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
    titles_count = small_catalogue["title"].nunique()
    for bad in (0, titles_count + 1, 10**6):  # 0 is not "the default"; no beam wider than that
        with pytest.raises(
            MlflowException, match=f"k must be between 1 and {titles_count} .*got {bad}"
        ):
            model.predict(pd.DataFrame({"history_item_ids": [[ids[1]]]}), params={"k": bad})
    with pytest.raises(
        MlflowException, match="row 0: item ids not in the catalogue: \\[123456789\\]"
    ):
        model.predict(pd.DataFrame({"history_item_ids": [[123456789]]}))
    details = mlflow.MlflowClient().get_model_version(NAME, version)
    assert details.tags["valid_ndcg_at_10"] == "0.1"
    with mlflow.start_run(), pytest.raises(ValueError, match=f"got {titles_count + 1}"):
        serving.log_recommender(
            tiny_backbone, small_catalogue, template, num_beams=5, batch_size=8, k=titles_count + 1
        )  # a default k no request could be answered with
    assert model.metadata.signature.params.to_dict()[0]["name"] == "k"


def test_a_request_the_model_cannot_answer_is_a_400_naming_row_and_rule(
    mlflow_store, tiny_backbone, small_catalogue, template
):
    register(tiny_backbone, small_catalogue, template, 0.1)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@challenger")
    schema = model.metadata.get_input_schema()

    def answer(records: list[dict]) -> tuple[int, dict]:
        body = json.dumps({"dataframe_records": records})
        try:
            response = invocations(body, "application/json", model, schema)
        except MlflowException as error:  # what the server turns into its response
            return error.get_http_status_code(), json.loads(error.serialize_as_json())
        return response.status, json.loads(response.response)

    ids = small_catalogue["item_id"].tolist()
    assert answer([{"history_item_ids": [ids[1]]}])[0] == 200
    cases = {
        # MLflow drops a column the signature does not know: it used to answer 200, no rows
        "neither a history_item_ids nor a history_titles column": [{"history_ids": [ids[1]]}],
        "row 1: item ids not in the catalogue: [123456789]": [
            {"history_item_ids": [ids[1]]},
            {"history_item_ids": [123456789]},
        ],
        "row 0: give exactly one of history_item_ids or history_titles": [{"history_item_ids": []}],
        # the tokenizer would read it as EOS: the prompt would end inside the history
        "row 0: history title 'Dune <|endoftext|>' spells the control token(s) <|endoftext|>": [
            {"history_titles": ["Dune <|endoftext|>"]}
        ],
    }
    for message, records in cases.items():
        status, error = answer(records)
        assert status == 400 and message in error["message"]
        assert "stack_trace" not in error  # no server paths in the answer


def test_concurrent_requests_decode_one_at_a_time(
    mlflow_store, tiny_backbone, small_catalogue, template
):
    """The server predicts each request in a thread; the beam search switches the shared
    model's attention mode while it runs, so two searches at once could see each other's."""
    register(tiny_backbone, small_catalogue, template, 0.1)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@challenger")
    recommender = model.unwrap_python_model().recommender
    search, running, most = recommender.recommend, [0], [0]

    def watched(*args, **kwargs):
        running[0] += 1
        most[0] = max(most[0], running[0])
        time.sleep(0.2)  # long enough for every other thread to arrive
        try:
            return search(*args, **kwargs)
        finally:
            running[0] -= 1

    recommender.recommend = watched
    request = pd.DataFrame({"history_item_ids": [[small_catalogue["item_id"].iloc[1]]]})
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: model.predict(request), range(4)))
    assert most[0] == 1
    assert all(a["titles"][0] == answers[0]["titles"][0] for a in answers)


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


def test_nothing_is_promoted_when_the_champion_moved_while_comparing(
    mlflow_store, tiny_backbone, small_catalogue, template
):
    first = register(tiny_backbone, small_catalogue, template, 0.1, rows="old-split")
    registry.promote(NAME)
    other = register(tiny_backbone, small_catalogue, template, 0.5, rows="old-split")
    register(tiny_backbone, small_catalogue, template, 0.2, rows="new-split")

    def rescore(uris, newer_than):  # another promote moves the champion meanwhile
        mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", other)
        return [0.2, 0.1]  # better than the champion it was compared with

    with pytest.raises(RuntimeError, match=f"moved from v{first} to v{other}"):
        registry.promote(NAME, rescore=rescore)
    assert aliases()["champion"] == other


def test_versions_without_a_rows_fingerprint_are_rescored(
    mlflow_store, tiny_backbone, small_catalogue, template
):
    client = mlflow.MlflowClient()
    champion = log_version(tiny_backbone, small_catalogue, template)  # registered by hand
    client.set_model_version_tag(NAME, champion, "valid_ndcg_at_10", "0.5")
    client.set_registered_model_alias(NAME, "champion", champion)
    challenger = log_version(tiny_backbone, small_catalogue, template)
    client.set_model_version_tag(NAME, challenger, "valid_ndcg_at_10", "0.9")
    client.set_registered_model_alias(NAME, "challenger", challenger)
    # their tags were measured on rows nobody recorded: not comparable
    decision = registry.promote(NAME, rescore=lambda uris, newer_than: [0.1, 0.2])
    assert not decision.promoted and aliases()["champion"] == champion


def test_rescoring_rows_are_newer_than_both_models_training(
    mlflow_store, tiny_backbone, small_catalogue, template
):
    register(tiny_backbone, small_catalogue, template, 0.3, rows="a", trained_before="1000")
    registry.promote(NAME)
    register(tiny_backbone, small_catalogue, template, 0.1, rows="b", trained_before="5000")
    calls = []
    registry.promote(NAME, rescore=lambda uris, newer_than: calls.append(newer_than) or [0.2, 0.1])
    assert calls == [5000]


def champion_and_compared_challenger(tiny_backbone, catalogue, template, rows, challenger_rows):
    """A promoted champion (valid NDCG@10 0.30 on ``rows``), then a challenger (0.2 on
    ``challenger_rows``) whose cycle scored that champion 0.15; their versions."""
    champion = register(tiny_backbone, catalogue, template, 0.30, rows=rows)
    registry.promote(NAME)
    tags = {registry.COMPARED_WITH: champion, registry.COMPARED_SCORE: "0.15"}
    challenger = register(tiny_backbone, catalogue, template, 0.2, rows=challenger_rows, **tags)
    return champion, challenger


def test_a_retrain_challenger_is_judged_by_its_comparison_with_this_champion(
    mlflow_store, tiny_backbone, small_catalogue, template
):
    # scored in its cycle on the new valid window: itself 0.2, the champion 0.15
    champion, challenger = champion_and_compared_challenger(
        tiny_backbone, small_catalogue, template, "release", "window"
    )

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


def test_the_recorded_comparison_comes_before_the_champions_own_tags(
    mlflow_store, tiny_backbone, small_catalogue, template
):
    # the same fingerprint, but this challenger's cycle also scored the champion: 0.15 is the
    # newer measurement (the champion's tag of 0.30 may come from another cycle's rows)
    _, challenger = champion_and_compared_challenger(
        tiny_backbone, small_catalogue, template, "same", "same"
    )
    decision = registry.promote(NAME)
    assert (decision.challenger_score, decision.champion_score) == (0.2, 0.15)
    assert decision.promoted and aliases()["champion"] == challenger


def test_a_champion_without_score_tags_is_compared_when_no_tag_is_needed(
    mlflow_store, tiny_backbone, small_catalogue, template
):
    client = mlflow.MlflowClient()
    bare = log_version(tiny_backbone, small_catalogue, template)  # registered by hand, no scores
    client.set_model_version_tag(NAME, bare, "valid_rows", "rows-a")  # the challengers' rows
    client.set_registered_model_alias(NAME, "champion", bare)
    tags = {registry.COMPARED_WITH: bare, registry.COMPARED_SCORE: "0.15"}
    challenger = register(tiny_backbone, small_catalogue, template, 0.2, **tags)
    assert registry.promote(NAME).promoted and aliases()["champion"] == challenger
    # on the same rows without a recorded comparison the champion's tag is needed, and named
    client.set_registered_model_alias(NAME, "champion", bare)
    register(tiny_backbone, small_catalogue, template, 0.2)
    with pytest.raises(ValueError, match=f"model version {bare} has no numeric 'valid_ndcg_at_10'"):
        registry.promote(NAME)
    assert aliases()["champion"] == bare


def test_nothing_is_promoted_when_the_challenger_alias_moved(
    mlflow_store, tiny_backbone, small_catalogue, template
):
    champion = register(tiny_backbone, small_catalogue, template, 0.1)
    registry.promote(NAME)
    mine = register(tiny_backbone, small_catalogue, template, 0.2)
    theirs = register(tiny_backbone, small_catalogue, template, 0.9)  # another register
    with pytest.raises(RuntimeError, match=f"moved to v{theirs} \\(expected v{mine}"):
        registry.promote(NAME, expected_challenger=mine)
    assert aliases() == {"champion": champion, "challenger": theirs}
    tags = mlflow.MlflowClient().get_model_version(NAME, theirs).tags
    assert not any(key.startswith("promotion.") for key in tags)
    assert registry.promote(NAME, expected_challenger=theirs).promoted


def test_the_rows_fingerprint_changes_with_what_the_score_depends_on():
    rows = pd.DataFrame(
        {
            "user_id": ["u1", "u2"],
            "item_id": [3, 4],
            "item_title": ["Kettle", "Lamp"],
            "prompt": ["bought: Mug. next:", "bought: Desk. next:"],
        }
    )
    titles = ["Kettle", "Lamp", "Mug", "Desk"]
    base = registry.rows_fingerprint(rows, titles, 20, 0.0)
    assert registry.rows_fingerprint(rows.copy(), list(reversed(titles)), 20, 0.0) == base
    other_prompt = rows.assign(prompt=["bought: Mug, Desk. next:", "bought: Desk. next:"])
    changed = [
        registry.rows_fingerprint(other_prompt, titles, 20, 0.0),  # a longer history window
        registry.rows_fingerprint(rows.iloc[::-1], titles, 20, 0.0),  # row order
        registry.rows_fingerprint(rows, titles[:-1], 20, 0.0),  # an item dropped
        registry.rows_fingerprint(rows, titles, 10, 0.0),  # beam width
        registry.rows_fingerprint(rows, titles, 20, 1.0),  # length penalty
    ]
    assert base not in changed and len(set(changed)) == len(changed)


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


def test_promote_rescores_on_reported_rows_only(
    mlflow_store, tiny_backbone, small_catalogue, template, monkeypatch
):
    from rere_pipeline.pipelines.registry.nodes import promote_challenger
    from rere_pipeline.pipelines.samples import report_sample, selection_sample

    titles = small_catalogue["title"].tolist()
    valid = pd.DataFrame(
        {
            "history_item_title": [[titles[i]] for i in range(8)],
            "item_title": titles[1:9],
            "timestamp": [1000 * (i + 1) for i in range(8)],
        }
    )
    reported = set(report_sample(valid, 4).index)
    newer = set(valid.index[valid["timestamp"] >= 4500])
    assert not newer <= reported  # else sampling the newer rows would pick the same ones
    seen = []
    monkeypatch.setattr(
        serving, "score_models", lambda uris, rows, k: seen.append(rows) or [0.2, 0.1]
    )
    register(tiny_backbone, small_catalogue, template, 0.3, "a", trained_before="1000")
    registry.promote(NAME)
    register(tiny_backbone, small_catalogue, template, 0.1, "b", trained_before="4500")
    promote_challenger(valid, {"model_name": NAME}, {"max_rows": {"valid": 4}})
    [rows] = seen
    # the reported rows after both trained: none of those training chose on
    assert set(rows.index) == reported & newer
    assert reported.isdisjoint(selection_sample(valid, 4).index)


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
