"""Constrained beam search: valid, distinct, in beam order, and equal to transformers' own."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from rere_pipeline.recsys import decoding
from rere_pipeline.recsys.decoding import (
    DecodeTimings,
    SharedPrefixUnsupported,
    _BeamLayer,
    constrained_beam_search,
    hf_constrained_beam_search,
    shared_prefix_attention,
)
from rere_pipeline.recsys.recommend import CatalogueRecommender


@pytest.fixture(scope="module")
def recommender(tiny_backbone, small_catalogue, template):
    return CatalogueRecommender(
        tiny_backbone.tokenizer,
        tiny_backbone.model,
        small_catalogue,
        template,
        num_beams=8,
        batch_size=4,
    )


@pytest.fixture(scope="module")
def histories(small_catalogue):
    titles = small_catalogue["title"].tolist()
    return [
        titles[i : i + n]
        for i, n in zip(range(0, 120, 10), [1, 3, 10, 2, 5, 7, 4, 9, 6, 8, 2, 1], strict=True)
    ]


@pytest.mark.parametrize("num_beams", [4, 8])
def test_groups_equal_transformers_beam_search(recommender, histories, num_beams):
    prompts = recommender.prompt_ids(histories)
    ours = constrained_beam_search(
        recommender.model, prompts, recommender.trie, num_beams, batch_size=5
    )
    theirs = hf_constrained_beam_search(
        recommender.model, prompts, recommender.trie, num_beams, batch_size=3
    )
    for a, b in zip(ours, theirs, strict=True):
        assert a.items == b.items
        assert a.scores == pytest.approx(b.scores, rel=1e-4, abs=1e-3)


def test_groups_are_valid_distinct_and_in_beam_order(recommender, histories, small_catalogue):
    recs = recommender.recommend(histories)
    known = set(small_catalogue["title"])
    for rec in recs:
        assert len(rec.titles) == 8
        assert set(rec.titles) <= known
        assert len(set(rec.titles)) == len(rec.titles)
        assert rec.scores == sorted(rec.scores, reverse=True)


def test_duplicate_titles_map_to_every_item_id(recommender, small_catalogue):
    title = small_catalogue["title"].iloc[0]
    index = recommender.titles.index(title)
    assert sorted(recommender.item_ids[index]) == sorted(
        small_catalogue.loc[small_catalogue["title"] == title, "item_id"]
    )


def test_batching_and_order_do_not_change_results(recommender, histories):
    prompts = recommender.prompt_ids(histories)
    one = constrained_beam_search(recommender.model, prompts, recommender.trie, 6, batch_size=1)
    many = constrained_beam_search(recommender.model, prompts, recommender.trie, 6, batch_size=12)
    assert [g.items for g in one] == [g.items for g in many]


def test_timings_are_recorded(recommender, histories):
    timings = DecodeTimings()
    start = time.perf_counter()
    recommender.decode(recommender.prompt_ids(histories[:3]), timings=timings)
    elapsed = time.perf_counter() - start
    assert {"prefill", "model", "constraint"} <= set(timings.seconds)
    assert all(seconds > 0 for seconds in timings.seconds.values())
    assert sum(timings.seconds.values()) <= elapsed  # parts of the decode, counted once


def test_shared_prefix_attention_equals_sdpa_on_copied_prompt_cache():
    """G beams reading their prompt's keys once give SDPA's result on G copies of them."""
    torch.manual_seed(0)
    P, G, heads, kv_heads, L, t, D = 3, 4, 4, 2, 7, 2, 8
    prefix_k, prefix_v = torch.randn(P, kv_heads, L, D), torch.randn(P, kv_heads, L, D)
    gen_k, gen_v = torch.randn(P * G, kv_heads, t, D), torch.randn(P * G, kv_heads, t, D)
    query = torch.randn(P * G, heads, 1, D)
    padding = torch.zeros(P, L, dtype=torch.bool)
    padding[0, :3], padding[2, :1] = True, True  # left padding of two prompts
    bias = torch.zeros(P, 1, 1, L).masked_fill(padding[:, None, None], torch.finfo(torch.float).min)

    layer = _BeamLayer(prefix_k, prefix_v, G, capacity=t)
    keys, values = layer.update(gen_k, gen_v)
    out, _ = shared_prefix_attention(
        SimpleNamespace(layer_idx=0),
        query,
        keys,
        values,
        bias,
        scaling=D**-0.5,
        beam_cache=SimpleNamespace(layers=[layer]),
    )

    full_k = torch.cat([prefix_k.repeat_interleave(G, 0), gen_k], dim=2)
    full_v = torch.cat([prefix_v.repeat_interleave(G, 0), gen_v], dim=2)
    visible = torch.cat(
        [~padding.repeat_interleave(G, 0), torch.ones(P * G, t, dtype=torch.bool)], 1
    )
    expected = F.scaled_dot_product_attention(
        query, full_k, full_v, attn_mask=visible[:, None, None], enable_gqa=True
    ).transpose(1, 2)
    assert out.shape == expected.shape == (P * G, 1, heads, D)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert layer.attended


def test_attention_the_shared_prompt_cache_cannot_serve_is_refused():
    P, G, D = 1, 2, 4
    layer = _BeamLayer(torch.zeros(P, 1, 3, D), torch.zeros(P, 1, 3, D), G, capacity=1)
    keys, values = layer.update(torch.zeros(P * G, 1, 1, D), torch.zeros(P * G, 1, 1, D))
    call = (
        SimpleNamespace(layer_idx=0),
        torch.zeros(P * G, 1, 1, D),
        keys,
        values,
        torch.zeros(P, 1, 1, 3),
    )
    for extra in ({"softcap": 50.0}, {"sliding_window": 4}, {"s_aux": torch.zeros(1)}):
        with pytest.raises(SharedPrefixUnsupported, match=next(iter(extra))):
            shared_prefix_attention(*call, beam_cache=SimpleNamespace(layers=[layer]), **extra)


def _tiny_lm(recommender, family: str, **config):
    """A seeded, randomly initialised 2-layer ``<family>ForCausalLM`` of transformers, on the
    recommender's vocabulary, peaky (large init range) so that beam scores are well apart."""
    import transformers

    torch.manual_seed(0)
    eos = recommender.trie.eos_token_id
    settings = {
        "vocab_size": len(recommender.tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "initializer_range": 0.5,
        "pad_token_id": eos,
        "eos_token_id": eos,
        "bos_token_id": eos,
    }
    made = getattr(transformers, f"{family}Config")(**{**settings, **config})
    return getattr(transformers, f"{family}ForCausalLM")(made).eval()


@pytest.mark.parametrize(
    ("family", "extra", "shared"),
    [
        ("Llama", {}, True),
        ("Mistral", {"sliding_window": None}, True),
        ("Mistral", {}, False),  # its default sliding window: transformers' generate decodes
    ],
    ids=["llama", "mistral", "mistral-sliding-window"],
)
def test_other_model_families_decode_too(recommender, histories, family, extra, shared):
    """Any local causal LM must decode: Llama-style models build their mask with
    ``create_causal_mask`` alone, which takes a ready 4D mask but no per-layer-type dict."""
    model = _tiny_lm(recommender, family, **extra)
    prompts = recommender.prompt_ids(histories[:4])
    ours = constrained_beam_search(model, prompts, recommender.trie, 4, batch_size=3)
    assert (model not in decoding._PLAIN_DECODING) == shared  # the shared prompt cache served it
    theirs = hf_constrained_beam_search(model, prompts, recommender.trie, 4, batch_size=2)
    for a, b in zip(ours, theirs, strict=True):
        assert a.items == b.items and len(a.items) == 4
        assert a.scores == pytest.approx(b.scores, rel=1e-4, abs=1e-3)


def test_a_soft_capped_model_is_decoded_by_transformers_generate(
    recommender, histories, caplog, monkeypatch
):
    """Gemma 2 soft-caps its attention logits: the shared prompt cache would decode it
    wrongly, so the search falls back to ``model.generate`` and gives its groups."""
    model = _tiny_lm(
        recommender,
        "Gemma2",
        head_dim=16,
        layer_types=["full_attention", "full_attention"],
        attn_logit_softcapping=2.0,
        final_logit_softcapping=None,
    )
    prompts = recommender.prompt_ids(histories[:4])
    with caplog.at_level("WARNING", logger="rere_pipeline.recsys.decoding"):
        ours = constrained_beam_search(model, prompts, recommender.trie, 4, batch_size=3)
    assert "softcap" in caplog.text and "generate instead" in caplog.text
    theirs = hf_constrained_beam_search(model, prompts, recommender.trie, 4, batch_size=2)
    assert [g.items for g in ours] == [g.items for g in theirs]
    assert all(len(g.items) == 4 for g in ours)

    # the refusal matters: the shared cache ignoring the cap finds other groups
    monkeypatch.setattr(decoding, "_UNSUPPORTED_ATTENTION", ("sliding_window",))
    uncapped = decoding._shared_prefix_search(
        model, prompts, recommender.trie, 4, 3, 0.0, None, None, False
    )
    assert [g.items for g in uncapped] != [g.items for g in theirs]
