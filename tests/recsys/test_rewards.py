"""ReRe's reward functions on hand-made groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rere_pipeline.recsys import rewards

# three "items": completion ids -> title; "Twin" is one title with two item ids (and two spellings)
INDEX = rewards.CatalogueIndex(
    {(1, 9): "Alpha", (2, 9): "Beta", (3, 9): "Gamma", (4, 9): "Twin", (5, 9): "Twin"},
    {"Alpha": [0], "Beta": [1], "Gamma": [2], "Twin": [3, 4]},
)
A, B, C, T1, T2 = [1, 9], [2, 9], [3, 9], [4, 9], [5, 9]


def call(fn, completion_ids, targets, **columns):
    return fn(
        prompts=["p"] * len(completion_ids),
        completions=["c"] * len(completion_ids),
        completion_ids=completion_ids,
        item_title=targets,
        **columns,
    )


def test_rule_reward_is_one_exactly_on_the_target_title():
    rule = rewards.rule_reward(INDEX)
    assert call(rule, [A, B, C], ["Beta"] * 3) == [0.0, 1.0, 0.0]
    # a duplicate title counts as a hit whichever of its items was generated
    assert call(rule, [T1, T2, A], ["Twin"] * 3) == [1.0, 1.0, 0.0]
    assert call(rule, [[7, 9]], ["Alpha"]) == [0.0]  # not a catalogue item


def test_ranking_penalties_follow_the_paper_formula():
    got = rewards.ranking_penalties(4)
    norm = sum(1 / math.log2(j + 2) for j in range(4))
    assert got == pytest.approx([-(1 / math.log2(k + 2)) / norm for k in range(4)])
    assert got[0] == pytest.approx(-1 / norm)  # the top-ranked negative is pushed hardest
    assert sum(got) == pytest.approx(-1.0)


def test_ranking_reward_on_groups_with_and_without_the_target():
    ranking = rewards.ranking_reward(INDEX, group_size=3)
    p = rewards.ranking_penalties(3)
    # group 1: target at rank 1; group 2: no target -> all zero
    out = call(ranking, [A, B, C, A, C, T1], ["Beta"] * 3 + ["Beta"] * 3)
    assert out == pytest.approx([p[0], 0.0, p[2], 0.0, 0.0, 0.0])
    # duplicate title: every beam spelling the target title gets 0
    out = call(ranking, [T1, A, T2], ["Twin"] * 3)
    assert out == pytest.approx([0.0, p[1], 0.0])


def test_ranking_reward_rejects_a_batch_that_is_not_whole_groups():
    ranking = rewards.ranking_reward(INDEX, group_size=4)
    with pytest.raises(ValueError, match="groups of 4"):
        call(ranking, [A, B, C], ["Alpha"] * 3)


class FakeEncoder:
    """Embeds a title as a fixed vector (counts calls to prove each title is embedded once)."""

    vectors = {"Alpha": [1, 0], "Beta": [0, 1], "Gamma": [1, 1], "Twin": [-1, 0]}

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, titles, batch_size, normalize_embeddings, show_progress_bar):
        self.seen += list(titles)
        v = np.array([self.vectors[t] for t in titles], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_semantic_reward_is_cosine_similarity_computed_once_per_title():
    encoder = FakeEncoder()
    semantic = rewards.semantic_reward(INDEX, rewards.TitleEmbeddings(encoder))
    out = call(semantic, [A, B, C, T1], ["Alpha"] * 4)
    assert out == pytest.approx([1.0, 0.0, 1 / math.sqrt(2), -1.0])
    call(semantic, [A, C], ["Gamma", "Alpha"])
    assert sorted(encoder.seen) == sorted(set(encoder.seen))


def test_semantic_reward_with_the_real_offline_minilm():
    embeddings = rewards.TitleEmbeddings()
    semantic = rewards.semantic_reward(
        rewards.CatalogueIndex(
            {
                (1,): "Stainless steel hex bolts, 50 pack",
                (2,): "Hex bolts in stainless steel (pack of 50)",
                (3,): "Organic citric acid powder",
            },
            {},
        ),
        embeddings,
    )
    near, same, far = call(semantic, [[2], [1], [3]], ["Stainless steel hex bolts, 50 pack"] * 3)
    assert same == pytest.approx(1.0, abs=1e-5)
    assert near > 0.7 > far


def test_collaborative_reward_is_sasrec_probability_relative_to_its_top_item():
    class FakeSASRec:
        def score(self, histories):
            row = [2.0, 0.0, math.log(0.5) + 2.0, -1.0, math.log(0.25) + 2.0]
            return torch.tensor([row] * len(histories))

    collaborative = rewards.collaborative_reward(INDEX, FakeSASRec())
    out = call(
        collaborative, [A, B, C, [7, 9], T1, T2], ["Alpha"] * 6, history_item_id=[[1, 2]] * 6
    )
    # "Twin" is items 3 and 4: either spelling scores the title's better item, 4
    assert out == pytest.approx([1.0, math.exp(-2.0), 0.5, 0.0, 0.25, 0.25])


def test_build_rewards_selects_and_weights_by_name():
    funcs, weights = rewards.build_rewards({"rule": 1.0, "ranking": 0.5}, INDEX, group_size=3)
    assert [f.__name__ for f in funcs] == ["rule", "ranking"] and weights == [1.0, 0.5]
    with pytest.raises(ValueError, match="unknown reward"):
        rewards.build_rewards({"bogus": 1.0}, INDEX, group_size=3)
    with pytest.raises(ValueError, match="SASRec"):
        rewards.build_rewards({"collaborative": 1.0}, INDEX, group_size=3)
