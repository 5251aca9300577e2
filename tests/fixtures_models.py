"""A tiny offline backbone over a slice of the real catalogue, shared by the tests
(registered as a pytest plugin in ``conftest.py``)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from rere_pipeline.pipelines.backbone.nodes import tokenizer_corpus
from rere_pipeline.recsys.backbone import Backbone, build_model, train_tokenizer
from rere_pipeline.recsys.prompts import PromptTemplate


@pytest.fixture(scope="session")
def small_catalogue(raw_release) -> pd.DataFrame:
    items = raw_release["items"]
    frame = (
        pd.DataFrame({"item_id": items["item_id"].astype(int), "title": items["title"]})
        .iloc[:400]
        .copy()
    )
    frame.loc[len(frame)] = [
        9999,
        frame["title"].iloc[0],
    ]  # a duplicate title, as the catalogue has 40
    return frame.reset_index(drop=True)


@pytest.fixture(scope="session")
def template() -> PromptTemplate:
    return PromptTemplate()


@pytest.fixture(scope="session")
def tiny_backbone(small_catalogue, template) -> Backbone:
    """Randomly initialised but peaky (large init range), so beam scores are well separated."""
    torch.set_num_threads(1)
    tokenizer = train_tokenizer(tokenizer_corpus(small_catalogue, template), vocab_size=700)
    model = build_model(
        tokenizer,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_positions=512,
        initializer_range=0.5,
    )
    model.eval()
    return Backbone(tokenizer, model)
