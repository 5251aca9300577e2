"""A prefix trie over the catalogue's tokenised completions, stored as tensors.

Every catalogue item's completion (``"title"`` + EOS, as token ids) is a path from the root;
the node reached after EOS is a leaf that names the item. Items with the same title share one
path, and so one leaf.

Built once, the trie is a handful of flat tensors, so constrained decoding asks it questions
for a whole batch of beams in a few tensor operations, never walking Python dicts per beam:

* ``children(nodes)`` -> every allowed (beam, token, child) edge of the given nodes (CSR:
  a node's outgoing edges are contiguous and sorted by token);
* ``step(nodes, tokens)`` -> the child reached by appending ``tokens`` (or -1: not allowed);
* ``walk(sequences)`` -> the node a batch of generated token sequences has reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch


@dataclass
class ItemTrie:
    edge_start: torch.Tensor  # [num_nodes] first edge of each node
    edge_count: torch.Tensor  # [num_nodes] number of outgoing edges
    edge_token: torch.Tensor  # [num_edges] token of each edge (sorted within a node)
    edge_child: torch.Tensor  # [num_edges] node the edge leads to
    edge_key: torch.Tensor  # [num_edges] parent * vocab + token, ascending (for lookups)
    leaf_item: torch.Tensor  # [num_nodes] index into ``sequences`` for leaves, else -1
    sequences: list[tuple[int, ...]]  # the distinct completions, each ending with EOS
    vocab_size: int
    eos_token_id: int
    _index: dict[tuple[int, ...], int] | None = field(default=None, repr=False, compare=False)

    ROOT = 0

    @classmethod
    def build(
        cls, completions: Sequence[Sequence[int]], eos_token_id: int, vocab_size: int
    ) -> ItemTrie:
        """A trie over ``completions`` (token ids, each ending with ``eos_token_id``).

        Duplicate completions collapse to one path: ``sequences[leaf_item[node]]`` gives the
        distinct completion a leaf stands for.
        """
        distinct = list(dict.fromkeys(tuple(c) for c in completions))
        for seq in distinct:
            if not seq or seq[-1] != eos_token_id or eos_token_id in seq[:-1]:
                raise ValueError(
                    f"a completion must end with EOS ({eos_token_id}) and contain it once: {seq}"
                )
        children: list[dict[int, int]] = [{}]
        leaf_of: dict[int, int] = {}
        for index, seq in enumerate(distinct):
            node = cls.ROOT
            for token in seq:
                nxt = children[node].get(token)
                if nxt is None:
                    nxt = len(children)
                    children[node][token] = nxt
                    children.append({})
                node = nxt
            leaf_of[node] = index
        counts = [len(c) for c in children]
        starts = [0]
        for c in counts[:-1]:
            starts.append(starts[-1] + c)
        tokens, kids, keys = [], [], []
        for parent, table in enumerate(children):
            for token in sorted(table):
                tokens.append(token)
                kids.append(table[token])
                keys.append(parent * vocab_size + token)
        leaf_item = torch.full((len(children),), -1, dtype=torch.long)
        for node, index in leaf_of.items():
            leaf_item[node] = index
        return cls(
            edge_start=torch.tensor(starts, dtype=torch.long),
            edge_count=torch.tensor(counts, dtype=torch.long),
            edge_token=torch.tensor(tokens, dtype=torch.long),
            edge_child=torch.tensor(kids, dtype=torch.long),
            edge_key=torch.tensor(keys, dtype=torch.long),
            leaf_item=leaf_item,
            sequences=distinct,
            vocab_size=vocab_size,
            eos_token_id=eos_token_id,
        )

    @property
    def depth(self) -> int:
        """Length of the longest completion: the most decoding steps ever needed."""
        return max(len(s) for s in self.sequences)

    def item_of(self, completion: Sequence[int]) -> int:
        """Index into ``sequences`` of a full completion (EOS included); KeyError if none."""
        if self._index is None:  # built once per trie, on first use
            self._index = {seq: i for i, seq in enumerate(self.sequences)}
        return self._index[tuple(completion)]

    def to(self, device: torch.device | str) -> ItemTrie:
        own = {f.name: getattr(self, f.name) for f in fields(self)}
        tensors = {k: v.to(device) for k, v in own.items() if isinstance(v, torch.Tensor)}
        return ItemTrie(**{**own, **tensors})

    def save(self, path: str | Path) -> None:
        """Write the trie as safetensors (its tensors, the completions flattened, and sizes)."""
        from safetensors.torch import save_file

        lengths = torch.tensor([len(s) for s in self.sequences], dtype=torch.long)
        flat = torch.tensor([t for s in self.sequences for t in s], dtype=torch.long)
        tensors = {k: v.contiguous() for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        save_file(
            {**tensors, "sequence_lengths": lengths, "sequence_tokens": flat},
            str(path),
            metadata={"vocab_size": str(self.vocab_size), "eos_token_id": str(self.eos_token_id)},
        )

    @classmethod
    def load(cls, path: str | Path) -> ItemTrie:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            meta = f.metadata()
        flat = tensors.pop("sequence_tokens").tolist()
        ends = torch.cumsum(tensors.pop("sequence_lengths"), 0).tolist()
        sequences = [tuple(flat[a:b]) for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        return cls(
            **tensors,
            sequences=sequences,
            vocab_size=int(meta["vocab_size"]),
            eos_token_id=int(meta["eos_token_id"]),
        )

    def children(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All edges out of ``nodes`` ([N], -1 = no node): (owner index, token, child), grouped
        by owner in order and by token within an owner."""
        valid = nodes >= 0
        safe = nodes.clamp(min=0)
        counts = torch.where(valid, self.edge_count[safe], 0)
        owner = torch.repeat_interleave(torch.arange(nodes.numel(), device=nodes.device), counts)
        first = (
            torch.cumsum(counts, 0) - counts
        )  # position of each owner's first edge in the output
        edge = (
            self.edge_start[safe][owner]
            + torch.arange(owner.numel(), device=nodes.device)
            - first[owner]
        )
        return owner, self.edge_token[edge], self.edge_child[edge]

    def step(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Child of each node by each token, -1 where the token is not allowed (or node is -1)."""
        keys = nodes.clamp(min=0) * self.vocab_size + tokens
        pos = torch.searchsorted(self.edge_key, keys).clamp(max=self.edge_key.numel() - 1)
        found = (self.edge_key[pos] == keys) & (nodes >= 0)
        return torch.where(found, self.edge_child[pos], -1)

    def walk(self, sequences: torch.Tensor) -> torch.Tensor:
        """Node reached by each row of ``sequences`` ([N, T] token ids) from the root."""
        nodes = torch.zeros(sequences.shape[0], dtype=torch.long, device=sequences.device)
        for t in range(sequences.shape[1]):
            nodes = self.step(nodes, sequences[:, t])
        return nodes

    def allowed_mask(self, nodes: torch.Tensor) -> torch.Tensor:
        """[N, vocab] boolean mask of the tokens allowed after each node."""
        owner, token, _ = self.children(nodes)
        mask = torch.zeros(nodes.numel(), self.vocab_size, dtype=torch.bool, device=nodes.device)
        mask[owner, token] = True
        return mask
