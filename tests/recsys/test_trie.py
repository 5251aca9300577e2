"""The catalogue trie: every title decodable, nothing else."""

from __future__ import annotations

import pytest
import torch

from rere_pipeline.recsys.prompts import completion_ids
from rere_pipeline.recsys.trie import ItemTrie


@pytest.fixture(scope="module")
def built(tiny_backbone, small_catalogue, template):
    tok = tiny_backbone.tokenizer
    completions = [completion_ids(tok, template, t) for t in small_catalogue["title"]]
    return ItemTrie.build(completions, tok.eos_token_id, len(tok)), completions


def test_every_completion_is_a_path_to_its_own_leaf(built):
    trie, completions = built
    width = max(map(len, completions))
    padded = torch.tensor([c + [trie.eos_token_id] * (width - len(c)) for c in completions])
    for seq, comp in zip(padded, completions, strict=True):
        node = trie.walk(seq[: len(comp)].unsqueeze(0))
        assert int(node) >= 0
        assert trie.sequences[int(trie.leaf_item[node])] == tuple(comp)
    assert len(trie.sequences) == len(set(map(tuple, completions)))  # duplicate title: one path


def test_nothing_else_is_allowed(built):
    trie, completions = built
    prefixes = {tuple(c[:i]) for c in completions for i in range(len(c) + 1)}
    # every allowed continuation of a real prefix is again a real prefix, and vice versa
    for prefix in list(prefixes)[:300]:
        node = (
            trie.walk(torch.tensor([list(prefix)], dtype=torch.long))
            if prefix
            else torch.tensor([0])
        )
        allowed = set(trie.allowed_mask(node)[0].nonzero().flatten().tolist())
        expected = {
            c[len(prefix)]
            for c in completions
            if tuple(c[: len(prefix)]) == prefix and len(c) > len(prefix)
        }
        assert allowed == expected, prefix
    # a token that continues no completion after the first one leads to the dead node (-1)
    first = completions[0][0]
    real = {c[1] for c in completions if c[0] == first and len(c) > 1}
    off = next(t for t in range(trie.vocab_size) if t not in real)
    assert int(trie.walk(torch.tensor([[first, off]]))) == -1


def test_children_is_csr_in_token_order(built):
    trie, _ = built
    owner, token, child = trie.children(torch.tensor([0, -1, 0]))
    root = trie.allowed_mask(torch.tensor([0]))[0].nonzero().flatten().tolist()
    assert owner.tolist() == [0] * len(root) + [2] * len(root)
    assert token.tolist() == root + root
    assert (
        trie.step(torch.zeros_like(token[: len(root)]), token[: len(root)]) == child[: len(root)]
    ).all()


def test_a_completion_without_eos_is_refused():
    with pytest.raises(ValueError, match="must end with EOS"):
        ItemTrie.build([[5, 6]], eos_token_id=0, vocab_size=10)
