"""Nodes of the ``prompts`` pipeline."""

from __future__ import annotations

import logging

import pandas as pd

from rere_pipeline.recsys.backbone import Backbone
from rere_pipeline.recsys.prompts import PromptTemplate, check_titles, encode_pairs

log = logging.getLogger(__name__)


def encode_split(
    backbone: Backbone, rows: pd.DataFrame, params: dict, catalogue: pd.DataFrame
) -> pd.DataFrame:
    """Prompt and completion text and ids for every row (tokenised separately). A catalogue
    title that spells a control token of the tokenizer is refused, naming its item: the rows'
    titles are the catalogue's (data validation checks it), and so is every item the trie of
    any later stage holds."""
    template = PromptTemplate.from_params(params)
    check_titles(
        backbone.tokenizer,
        catalogue["item_id"].astype(int).tolist(),
        catalogue["title"].astype(str).tolist(),
        "prompts",
    )
    columns = encode_pairs(
        backbone.tokenizer,
        template,
        [list(h) for h in rows["history_item_title"]],
        rows["item_title"].tolist(),
    )
    out = pd.DataFrame(
        {
            "user_id": rows["user_id"].values,
            "item_id": rows["item_id"].values,
            "item_title": rows["item_title"].values,
            **columns,
        }
    )
    lengths = out["prompt_ids"].map(len)
    log.info(
        "%d prompts, %.1f prompt tokens on average (max %d)",
        len(out),
        lengths.mean(),
        lengths.max(),
    )
    return out
