"""The recommender as an MLflow pyfunc model: histories in, top-K catalogue items out.

A logged model is self-describing. Its artifacts are

* ``model/``: the Hugging Face directory (safetensors weights, tokenizer, configs);
* ``catalogue.parquet``: every item id and title it may recommend;
* ``trie.safetensors``: the catalogue trie over the tokenised completions;
* ``recommender.json``: the prompt template and the decoding settings.

Input: a frame with one row per user and either ``history_item_ids`` (catalogue item ids,
oldest first) or ``history_titles`` (titles; any text, so items newer than the model work too);
one request uses one of the two columns for all its rows. Output: one row per user with ``item_ids``,
``titles`` and ``scores`` of the top ``k`` items (``k`` is a parameter, default in
``recommender.json``). A request it cannot answer (no history column, an unknown id, an empty
history, ``k`` out of range) is an HTTP 400 whose message names the row and the rule. Serve it
with ``MLFLOW_TRACKING_URI=sqlite:///mlruns/mlflow.db mlflow models serve -m
models:/rere-recommender@champion --host 127.0.0.1 --env-manager local`` (``make serve``).
"""

import json
import logging
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

from rere_pipeline.recsys.backbone import Backbone, load_backbone, save_backbone
from rere_pipeline.recsys.prompts import PromptTemplate, spelt_control_tokens
from rere_pipeline.recsys.recommend import CatalogueRecommender
from rere_pipeline.recsys.trie import ItemTrie

log = logging.getLogger(__name__)

ARTIFACTS = {
    "model": "model",
    "catalogue": "catalogue.parquet",
    "trie": "trie.safetensors",
    "settings": "recommender.json",
}


def signature(k: int) -> ModelSignature:
    return ModelSignature(
        inputs=Schema(
            [
                ColSpec(Array(DataType.long), "history_item_ids", required=False),
                ColSpec(Array(DataType.string), "history_titles", required=False),
            ]
        ),
        outputs=Schema(
            [
                ColSpec(Array(DataType.long), "item_ids"),
                ColSpec(Array(DataType.string), "titles"),
                ColSpec(Array(DataType.double), "scores"),
            ]
        ),
        params=ParamSchema([ParamSpec("k", DataType.long, k)]),
    )


def bad_request(message: str) -> MlflowException:
    """An error the scoring server answers with HTTP 400 and this message (any other
    exception is a generic 400 whose text hides in a server traceback)."""
    return MlflowException.invalid_parameter_value(message)


def k_problem(k: int, recommender: CatalogueRecommender) -> str | None:
    """Why ``k`` items cannot be recommended from this catalogue (None: they can): the beam
    search, at least ``k`` wide, ranks each distinct title once."""
    titles = len(recommender.trie.sequences)
    if not 1 <= k <= titles:
        return f"k must be between 1 and {titles} (the catalogue's titles), got {k}"
    return None


class RecommenderModel(mlflow.pyfunc.PythonModel):
    """``predict(frame of histories) -> frame of top-K item ids, titles and scores``.

    The server runs each request in a thread of its own on the one loaded model: the beam
    search switches the model's attention mode while it runs, so requests decode one at a
    time."""

    def load_context(self, context) -> None:
        self._decoding = threading.Lock()
        settings = json.loads(Path(context.artifacts["settings"]).read_text())
        backbone = load_backbone(context.artifacts["model"])
        catalogue = pd.read_parquet(context.artifacts["catalogue"])
        self.k = int(settings["k"])
        self.recommender = CatalogueRecommender(
            backbone.tokenizer,
            backbone.model,
            catalogue,
            PromptTemplate(**settings["template"]),
            num_beams=int(settings["num_beams"]),
            batch_size=int(settings["batch_size"]),
            length_penalty=float(settings["length_penalty"]),
            trie=ItemTrie.load(context.artifacts["trie"]),
        )
        self.title_of = dict(
            zip(catalogue["item_id"].astype(int), catalogue["title"].astype(str), strict=True)
        )

    def predict(
        self, context, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        k = (params or {}).get("k")
        k = self.k if k is None else int(k)
        if problem := k_problem(k, self.recommender):
            raise bad_request(problem)
        if not {"history_item_ids", "history_titles"} & set(model_input.columns):
            # MLflow drops columns the signature does not know: a misspelt name arrives as none
            raise bad_request(
                "the request has neither a history_item_ids nor a history_titles column "
                "(other columns are ignored)"
            )
        histories = [self._history(i, row) for i, row in enumerate(model_input.to_dict("records"))]
        with self._decoding:
            recs = self.recommender.recommend(
                histories, num_beams=max(k, self.recommender.num_beams)
            )
        return pd.DataFrame(
            {
                "item_ids": [[ids[0] for ids in r.item_ids[:k]] for r in recs],
                "titles": [r.titles[:k] for r in recs],
                "scores": [[float(s) for s in r.scores[:k]] for r in recs],
            }
        )

    def _history(self, row_no: int, row: dict) -> list[str]:
        ids, titles = _present(row.get("history_item_ids")), _present(row.get("history_titles"))
        if (ids is None) == (titles is None):
            raise bad_request(
                f"row {row_no}: give exactly one of history_item_ids or history_titles "
                "(a non-empty list, oldest first)"
            )
        if ids is not None:
            unknown = [i for i in ids if int(i) not in self.title_of]
            if unknown:
                raise bad_request(f"row {row_no}: item ids not in the catalogue: {unknown[:10]}")
            return [self.title_of[int(i)] for i in ids]
        titles = [str(t) for t in titles]  # any text: the LM reads titles, new items included
        if spelt := spelt_control_tokens(self.recommender.tokenizer, titles):
            title, tokens = next(iter(spelt.items()))
            raise bad_request(
                f"row {row_no}: history title {title!r} spells the control token(s) "
                f"{', '.join(tokens)} of the model's tokenizer, which would read them as such"
            )
        return titles


def _present(cell) -> list | None:
    """A list cell as a list; None for a missing, NaN or empty cell."""
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return None
    values = list(cell)
    return values or None


def log_recommender(
    backbone: Backbone,
    catalogue: pd.DataFrame,
    template: PromptTemplate,
    *,
    num_beams: int,
    batch_size: int,
    length_penalty: float = 0.0,
    k: int = 10,
    example_history: Sequence[int] = (),
    registered_model_name: str | None = None,
    tags: dict[str, str] | None = None,
):
    """Log the recommender as a pyfunc model in the active MLflow run (and register it)."""
    from rere_pipeline import __version__

    recommender = CatalogueRecommender(backbone.tokenizer, backbone.model, catalogue, template)
    if problem := k_problem(k, recommender):  # every request without its own k would fail
        raise ValueError(problem)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = {name: str(folder / file) for name, file in ARTIFACTS.items()}
        save_backbone(backbone, paths["model"])
        catalogue[["item_id", "title"]].to_parquet(paths["catalogue"], index=False)
        recommender.trie.save(paths["trie"])
        Path(paths["settings"]).write_text(
            json.dumps(
                {
                    "template": asdict(template),
                    "num_beams": num_beams,
                    "batch_size": batch_size,
                    "length_penalty": length_penalty,
                    "k": k,
                },
                indent=2,
            )
        )
        example = list(example_history) or catalogue["item_id"].astype(int).head(3).tolist()
        return mlflow.pyfunc.log_model(
            name="recommender",
            python_model=str(Path(__file__).with_name("recommender_model.py")),
            artifacts=paths,
            signature=signature(k),
            input_example=pd.DataFrame({"history_item_ids": [[int(i) for i in example]]}),
            pip_requirements=[f"rere_pipeline=={__version__}"],
            registered_model_name=registered_model_name,
            tags=tags,
        )


def load_backbone_from_model(model_uri: str) -> Backbone:
    """The Hugging Face model inside a logged recommender (e.g. to warm-start from it)."""
    local = mlflow.artifacts.download_artifacts(f"{model_uri.rstrip('/')}/artifacts/model")
    return load_backbone(local)


def score_models(model_uris: Sequence[str], rows: pd.DataFrame, k: int = 10) -> list[float]:
    """NDCG@k of each logged recommender on the same rows (``history_item_title`` ->
    ``item_title``), through the models' own ``predict``: each uses its own tokenizer,
    template and catalogue, so versions built on different backbones compare fairly."""
    from rere_pipeline.recsys.metrics import ranking_metrics

    histories = pd.DataFrame(
        {"history_titles": [[str(t) for t in h] for h in rows["history_item_title"]]}
    )
    targets = rows["item_title"].astype(str).tolist()
    scores = []
    for uri in model_uris:
        ranked = mlflow.pyfunc.load_model(uri).predict(histories, params={"k": k})["titles"]
        scores.append(ranking_metrics(list(ranked), targets, [k])[f"NDCG@{k}"])
        log.info("%s: NDCG@%d %.4f on %d rows", uri, k, scores[-1], len(rows))
    return scores
