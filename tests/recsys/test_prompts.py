"""Prompts and completions are tokenised separately; the trie allows exactly the trained tokens."""

from __future__ import annotations

import copy
import re

import pandas as pd
import pytest

from rere_pipeline.pipelines.prompts.nodes import encode_split
from rere_pipeline.recsys.prompts import (
    PromptTemplate,
    completion_ids,
    encode,
    encode_pairs,
    spelt_control_tokens,
)
from rere_pipeline.recsys.recommend import CatalogueRecommender


def test_prompt_lists_history_in_quotes_and_ends_with_the_cue():
    template = PromptTemplate(max_history=2)
    text = template.prompt(["a", "b", "c"])
    assert (
        text
        == 'A user bought these items, oldest first:\n"b"\n"c"\nThe next item the user buys is:\n'
    )


def test_null_max_history_keeps_the_whole_history():
    text = PromptTemplate.from_params({"max_history": None}).prompt(["a", "b", "c"])
    assert '"a"\n"b"\n"c"' in text


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_histroy": 5}, r"unknown key\(s\) \['max_histroy'\]"),
        ({"max_history": 0}, "max_history must be a positive integer or null"),
        ({"max_history": "10"}, "max_history must be a positive integer or null"),
        ({"completion": "{name}"}, r"prompts.completion must contain \{title\}"),
    ],
)
def test_prompt_parameters_are_checked(params, message):
    with pytest.raises(ValueError, match=message):
        PromptTemplate.from_params(params)


def test_pairs_are_prompt_ids_then_completion_ids_then_eos(
    tiny_backbone, template, small_catalogue
):
    tok = tiny_backbone.tokenizer
    titles = small_catalogue["title"].tolist()
    cols = encode_pairs(tok, template, [titles[:3], titles[5:6]], [titles[10], titles[11]])
    for i, target in enumerate([titles[10], titles[11]]):
        p_ids = encode(tok, cols["prompt"][i])
        c_ids = completion_ids(tok, template, target)
        assert cols["prompt_ids"][i] == p_ids
        assert cols["input_ids"][i] == p_ids + c_ids
        assert cols["completion_mask"][i] == [0] * len(p_ids) + [1] * len(c_ids)
        assert c_ids[-1] == tok.eos_token_id
        assert tok.decode(c_ids[:-1]) == f'"{target}"'


def test_completion_tokens_are_what_the_trie_allows(tiny_backbone, template, small_catalogue):
    rec = CatalogueRecommender(
        tiny_backbone.tokenizer, tiny_backbone.model, small_catalogue, template
    )
    for title in small_catalogue["title"].iloc[:50]:
        seq = tuple(completion_ids(tiny_backbone.tokenizer, template, title))
        assert rec.titles[rec.trie.sequences.index(seq)] == title


def test_titles_spelling_a_control_token_are_refused_naming_their_items(
    tiny_backbone, template, small_catalogue
):
    tok = tiny_backbone.tokenizer
    eos, pad = tok.eos_token, tok.pad_token
    assert spelt_control_tokens(tok, [f"Dune {eos}", f"a{pad}b{eos}", "<|endoftext", "Dune"]) == {
        f"Dune {eos}": [eos],
        f"a{pad}b{eos}": [pad, eos],
    }
    catalogue = small_catalogue.copy()
    catalogue.loc[3, "title"] = f"Dune {eos} Deluxe"  # read as EOS: a completion ending early
    with pytest.raises(
        ValueError,
        match=rf"catalogue: 1 title\(s\) .*item {catalogue.loc[3, 'item_id']} "
        rf"'Dune {re.escape(eos)} Deluxe' spells {re.escape(eos)}",
    ):
        CatalogueRecommender(tok, tiny_backbone.model, catalogue, template)

    titles = small_catalogue["title"].tolist()
    rows = pd.DataFrame(
        {
            "user_id": ["u1", "u2"],
            "item_id": [1, 2],
            "item_title": [titles[1], titles[2]],
            "history_item_id": [[7, 8], [9]],
            "history_item_title": [[titles[7], titles[8]], [titles[9]]],
        }
    )
    # an item no row holds: it is still in every stage's trie, so the prompts stage refuses it
    ids = [1, 2, 7, 8, 9, 40]
    catalogue = pd.DataFrame(
        {"item_id": ids, "title": [*(titles[i] for i in ids[:-1]), f"x {pad}"]}
    )
    with pytest.raises(ValueError, match=rf"prompts: 1 title\(s\) .*item 40 'x {re.escape(pad)}'"):
        encode_split(tiny_backbone, rows, {}, catalogue)
    catalogue.loc[5, "title"] = titles[40]
    assert len(encode_split(tiny_backbone, rows, {}, catalogue)) == 2


def test_added_tokens_that_are_not_special_are_read_back_as_text(tiny_backbone):
    """Some tokenizers add runs of spaces or whole words as tokens: they decode to the same
    text, so a title holding them is an ordinary title."""
    tok = copy.deepcopy(tiny_backbone.tokenizer)
    tok.add_tokens(["  ", "Deluxe"])
    eos = tok.eos_token
    titles = ["Dune  Deluxe", f"Dune {eos}"]
    assert spelt_control_tokens(tok, titles) == {f"Dune {eos}": [eos]}
