"""The catalogue recommender: an LM, its catalogue trie and prompt template, titles in, titles out.

``CatalogueRecommender`` is what evaluation scores, what RL samples groups from and what a
served model answers with: for each history it returns the top-G distinct catalogue items of
a constrained beam search, with their titles, item ids (two ids may share a title) and scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from rere_pipeline.recsys.decoding import DecodeTimings, Group, constrained_beam_search
from rere_pipeline.recsys.prompts import PromptTemplate, check_titles, completion_ids, encode
from rere_pipeline.recsys.trie import ItemTrie


@dataclass
class Recommendation:
    titles: list[str]
    item_ids: list[list[int]]
    scores: list[float]


class CatalogueRecommender:
    def __init__(
        self,
        tokenizer,
        model,
        catalogue: pd.DataFrame,
        template: PromptTemplate,
        *,
        num_beams: int = 20,
        batch_size: int = 32,
        length_penalty: float = 0.0,
        trie: ItemTrie | None = None,
    ):
        """``trie``: a saved trie to use instead of building one; it must hold exactly the
        catalogue's completions under this tokenizer and template."""
        self.tokenizer, self.model, self.template = tokenizer, model, template
        self.num_beams, self.batch_size, self.length_penalty = num_beams, batch_size, length_penalty
        titles = catalogue["title"].astype(str).tolist()
        ids = catalogue["item_id"].astype(int).tolist()
        check_titles(tokenizer, ids, titles, "catalogue")
        completions = [tuple(completion_ids(tokenizer, template, t)) for t in titles]
        if trie is None:
            vocab = max(model.config.vocab_size, len(tokenizer))
            trie = ItemTrie.build(completions, tokenizer.eos_token_id, vocab)
        elif set(trie.sequences) != set(completions):
            raise ValueError(
                "the saved trie does not match the catalogue under this tokenizer and template "
                f"({len(set(trie.sequences) ^ set(completions))} completions differ)"
            )
        self.trie = trie
        self.titles = [""] * len(self.trie.sequences)
        self.item_ids: list[list[int]] = [[] for _ in self.trie.sequences]
        for title, item_id, seq in zip(titles, ids, completions, strict=True):
            self.titles[self.trie.item_of(seq)] = title
            self.item_ids[self.trie.item_of(seq)].append(item_id)

    def prompt_ids(self, histories: Sequence[Sequence[str]]) -> list[list[int]]:
        return [encode(self.tokenizer, self.template.prompt(h)) for h in histories]

    def decode(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        num_beams: int | None = None,
        timings: DecodeTimings | None = None,
        progress: bool = False,
    ) -> list[Group]:
        return constrained_beam_search(
            self.model,
            prompt_ids,
            self.trie,
            num_beams or self.num_beams,
            batch_size=self.batch_size,
            length_penalty=self.length_penalty,
            pad_token_id=self.tokenizer.pad_token_id,
            timings=timings,
            progress=progress,
        )

    def to_recommendations(self, groups: Sequence[Group]) -> list[Recommendation]:
        return [
            Recommendation(
                [self.titles[i] for i in g.items],
                [self.item_ids[i] for i in g.items],
                list(g.scores),
            )
            for g in groups
        ]

    def recommend(self, histories: Sequence[Sequence[str]], **kwargs) -> list[Recommendation]:
        return self.to_recommendations(self.decode(self.prompt_ids(histories), **kwargs))
