"""Nodes of the ``backbone`` pipeline."""

from __future__ import annotations

import logging

import pandas as pd

from rere_pipeline.recsys.backbone import Backbone, build_model, load_backbone, train_tokenizer
from rere_pipeline.recsys.prompts import PromptTemplate

log = logging.getLogger(__name__)


def tokenizer_corpus(catalogue: pd.DataFrame, template: PromptTemplate) -> list[str]:
    """What the offline tokenizer learns from: every completion and the template's own text."""
    completions = [template.completion_text(t) for t in catalogue["title"].astype(str)]
    scaffold = [template.prompt(["x"]), template.instruction, template.answer_cue]
    return completions + scaffold * 100  # the scaffold is in every prompt: weight it so


def make_backbone(catalogue: pd.DataFrame, params: dict, prompt_params: dict) -> Backbone:
    """Load ``backbone.name_or_path`` if set, else train a tokenizer and build a small Qwen2."""
    if params.get("name_or_path"):
        log.info("using the local checkpoint %s", params["name_or_path"])
        return load_backbone(params["name_or_path"], **params.get("load_args", {}))
    template = PromptTemplate.from_params(prompt_params)
    tokenizer = train_tokenizer(tokenizer_corpus(catalogue, template), **params["tokenizer"])
    model = build_model(tokenizer, seed=int(params.get("seed", 0)), **params["model"])
    return Backbone(tokenizer, model)
