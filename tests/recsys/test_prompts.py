"""Prompts and completions are tokenised separately; the trie allows exactly the trained tokens."""

from __future__ import annotations

import pytest

from rere_pipeline.recsys.prompts import PromptTemplate, completion_ids, encode, encode_pairs


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
    from rere_pipeline.recsys.recommend import CatalogueRecommender

    rec = CatalogueRecommender(
        tiny_backbone.tokenizer, tiny_backbone.model, small_catalogue, template
    )
    for title in small_catalogue["title"].iloc[:50]:
        seq = tuple(completion_ids(tiny_backbone.tokenizer, template, title))
        assert rec.titles[rec.trie.sequences.index(seq)] == title
