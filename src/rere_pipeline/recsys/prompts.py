"""Prompts and completions, tokenised separately.

A prompt lists the user's history titles in quotes and ends with an answer cue; the
completion is the next item's title in quotes, then EOS. Prompt and completion are tokenised
**separately** and concatenated as ids: tokenising them together would let BPE merge across
the boundary, and the model would learn tokens the catalogue trie never allows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rere_pipeline.recsys.params import dataclass_from_params


@dataclass(frozen=True)
class PromptTemplate:
    """``parameters_prompts.yml``: ``instruction`` + history lines + ``answer_cue``."""

    instruction: str = "A user bought these items, oldest first:"
    item: str = '"{title}"'
    separator: str = "\n"
    answer_cue: str = "\nThe next item the user buys is:\n"
    completion: str = '"{title}"'
    max_history: int | None = 10  # the most recent titles kept; None: the whole history

    def __post_init__(self):
        for name in ("item", "completion"):
            if "{title}" not in getattr(self, name):
                raise ValueError(f"prompts.{name} must contain {{title}}: {getattr(self, name)!r}")
        if self.max_history is not None and (
            isinstance(self.max_history, bool)
            or not isinstance(self.max_history, int)
            or self.max_history < 1
        ):
            raise ValueError(
                f"prompts.max_history must be a positive integer or null (the whole history), "
                f"not {self.max_history!r}"
            )

    @classmethod
    def from_params(cls, params: dict) -> PromptTemplate:
        """The template of ``parameters_prompts.yml``; a key it does not know is refused."""
        return dataclass_from_params(cls, params, "prompts")

    def prompt(self, history_titles: Sequence[str]) -> str:
        recent = list(history_titles)
        if self.max_history is not None:
            recent = recent[-self.max_history :]
        lines = self.separator.join(self.item.format(title=t) for t in recent)
        return f"{self.instruction}{self.separator}{lines}{self.answer_cue}"

    def completion_text(self, title: str) -> str:
        return self.completion.format(title=title)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def spelt_control_tokens(tokenizer, titles: Iterable[str]) -> dict[str, list[str]]:
    """The titles among ``titles`` that spell out one of the tokenizer's control tokens (EOS,
    padding, an instruct checkpoint's chat markers: its special tokens), each with the tokens
    it spells.

    A tokenizer reads such text as the control token itself, not as characters: in a prompt
    it would end or restructure the prompt, and a completion holding EOS has no place in the
    catalogue trie. Added tokens that are not special (runs of spaces, extra words) read back
    as the same text and are left alone. Only tokens whose text is in the title count: an
    unknown character that a tokenizer maps to its unknown token is not a spelt control token
    (a byte-level BPE, as the default backbone's, has no unknown characters).
    """
    control = set(tokenizer.all_special_ids) | {
        i for i, token in tokenizer.added_tokens_decoder.items() if token.special
    }
    distinct = list(dict.fromkeys(str(t) for t in titles))
    if not distinct:
        return {}
    found: dict[str, list[str]] = {}
    encoded = tokenizer(distinct, add_special_tokens=False)["input_ids"]
    for title, ids in zip(distinct, encoded, strict=True):
        spelt = [tokenizer.convert_ids_to_tokens(i) for i in ids if i in control]
        spelt = list(dict.fromkeys(t for t in spelt if t in title))
        if spelt:
            found[title] = spelt
    return found


def check_titles(tokenizer, item_ids: Sequence[int], titles: Sequence[str], where: str) -> None:
    """Refuse item titles that spell a control token of the tokenizer (``spelt_control_tokens``),
    naming the items: the catalogue's title is what to edit."""
    found = spelt_control_tokens(tokenizer, titles)
    if not found:
        return
    items = {}
    for item_id, title in zip(item_ids, titles, strict=True):
        if str(title) in found:
            items.setdefault(str(title), []).append(int(item_id))
    listed = "; ".join(
        f"item {', '.join(map(str, items[t]))} {t!r} spells {', '.join(found[t])}"
        for t in list(found)[:5]
    )
    raise ValueError(
        f"{where}: {len(found)} title(s) spell out control tokens of the tokenizer, which would "
        f"read them as those tokens and not as text ({listed}"
        f"{'; ...' if len(found) > 5 else ''}). Edit these titles in the catalogue"
    )


def completion_ids(tokenizer, template: PromptTemplate, title: str) -> list[int]:
    """What the model must emit for ``title``: its completion's tokens, then EOS."""
    return [*encode(tokenizer, template.completion_text(title)), tokenizer.eos_token_id]


def encode_pairs(
    tokenizer, template: PromptTemplate, histories: Sequence[Sequence[str]], targets: Sequence[str]
) -> dict[str, list]:
    """Columns of a tokenised prompt/completion dataset (TRL's ``input_ids`` + ``completion_mask``)."""
    cache: dict[str, list[int]] = {}  # titles recur: tokenise each completion once

    def target_ids(title: str) -> list[int]:
        if title not in cache:
            cache[title] = completion_ids(tokenizer, template, title)
        return cache[title]

    prompts, prompt_ids, completions, input_ids, masks = [], [], [], [], []
    for history, target in zip(histories, targets, strict=True):
        text = template.prompt(history)
        p_ids, c_ids = encode(tokenizer, text), target_ids(target)
        prompts.append(text)
        prompt_ids.append(p_ids)
        completions.append(template.completion_text(target))
        input_ids.append(p_ids + c_ids)
        masks.append([0] * len(p_ids) + [1] * len(c_ids))
    return {
        "prompt": prompts,
        "completion": completions,
        "prompt_ids": prompt_ids,
        "input_ids": input_ids,
        "completion_mask": masks,
    }
