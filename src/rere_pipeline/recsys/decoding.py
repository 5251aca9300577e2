"""Constrained beam search over the catalogue: G distinct, valid items per prompt.

``constrained_beam_search`` reproduces ``transformers``' beam search (``num_beams = G``,
``num_return_sequences = G``, no sampling) under a catalogue-trie constraint, and returns the
same groups, but does less work:

* the prompt is run **once** (HF ``generate`` copies every prompt G times *before*
  prefill, so prefill costs G times more) and its KV cache is never copied to the beams:
  ``shared_prefix_attention`` lets a prompt's G beams read its prompt keys and values in one
  matrix product (registered as an ``AttentionInterface`` implementation, so it serves any
  model that uses transformers' attention functions with plain softmax attention; a model
  with a sliding window, logit soft-capping or attention sinks, or one that bypasses the
  interface, is decoded by ``hf_constrained_beam_search`` instead, with a warning);
* the generated part of the cache sits in buffers allocated once; a beam reorder moves only
  those few tokens;
* many prompts are decoded together; prompts whose beams can no longer improve are dropped
  from the batch once half of it is done, not carried until the slowest prompt finishes;
* the constraint is pure tensor work on the trie (``ItemTrie.children``): only the allowed
  (beam, token) pairs are scored, so no ``[beams, vocab]`` mask is ever built.

Scores are the model's log-probabilities (log-softmax over the whole vocabulary, as HF's
logits processors see them), summed over the completion and divided by
``length ** length_penalty``. With the default ``length_penalty = 0`` a group is ordered by
the likelihood of each item's full completion. We deliberately do **not** renormalise over
the allowed tokens: the score stays the model's own probability of the title.

``TrieLogitsProcessor`` is the same constraint as an HF ``LogitsProcessor``, used for the
equality test and the benchmark against ``model.generate``.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface, LogitsProcessor
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from rere_pipeline.recsys.trie import ItemTrie

_NEG = -1.0e9  # HF's "impossible" score
log = logging.getLogger(__name__)


class SharedPrefixUnsupported(NotImplementedError):
    """The model's attention is not plain softmax attention through ``AttentionInterface``."""


# attention arguments that change the softmax ``shared_prefix_attention`` computes
_UNSUPPORTED_ATTENTION = ("sliding_window", "softcap", "s_aux")
# models found unsupported: decoded by ``hf_constrained_beam_search`` from then on
_PLAIN_DECODING: weakref.WeakSet = weakref.WeakSet()


@dataclass
class Group:
    """One prompt's beams, best first: trie leaf items, their scores and completion ids."""

    items: list[int]  # index into ``ItemTrie.sequences``
    scores: list[float]
    completions: list[list[int]]


@dataclass
class DecodeTimings:
    """Seconds spent per part of decoding (for the benchmark)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, part: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[part] += now - since
        return now


def left_pad(
    prompts: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of prompts padded on the left to one length."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


@contextmanager
def evaluating(model):
    """``model`` in eval mode (no dropout) for the block, then back in its previous mode: the
    decoders run inside training loops (ReRe's groups, valid scores)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def constrained_beam_search(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    trie: ItemTrie,
    num_beams: int,
    *,
    batch_size: int = 32,
    length_penalty: float = 0.0,
    pad_token_id: int | None = None,
    timings: DecodeTimings | None = None,
    progress: bool = False,
) -> list[Group]:
    """Top-``num_beams`` catalogue items for every prompt (token ids), in beam order.

    Prompts are decoded in batches of ``batch_size``, longest first so that each batch has
    little padding; the result is in the order of ``prompts``. A model whose attention the
    shared prompt cache cannot serve (``SharedPrefixUnsupported``) gets the same search from
    ``hf_constrained_beam_search``: slower, never wrong.
    """
    if model not in _PLAIN_DECODING:
        try:
            return _shared_prefix_search(
                model,
                prompts,
                trie,
                num_beams,
                batch_size,
                length_penalty,
                pad_token_id,
                timings,
                progress,
            )
        except SharedPrefixUnsupported as reason:
            log.warning("%s; decoding with transformers' generate instead (slower)", reason)
            _PLAIN_DECODING.add(model)
    return hf_constrained_beam_search(
        model,
        prompts,
        trie,
        num_beams,
        batch_size=batch_size,
        length_penalty=length_penalty,
        pad_token_id=pad_token_id,
    )


def _shared_prefix_search(
    model, prompts, trie, num_beams, batch_size, length_penalty, pad_token_id, timings, progress
) -> list[Group]:
    from tqdm.auto import tqdm

    pad = trie.eos_token_id if pad_token_id is None else pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[Group | None] = [None] * len(prompts)
    bar = tqdm(
        total=len(prompts), desc="constrained beam search", unit="prompt", disable=not progress
    )
    with evaluating(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            groups = _search_batch(
                model, [prompts[i] for i in chunk], trie, num_beams, length_penalty, pad, timings
            )
            for i, group in zip(chunk, groups, strict=True):
                results[i] = group
            bar.update(len(chunk))
    bar.close()
    return results  # type: ignore[return-value]


class _BeamLayer(DynamicLayer):
    """One layer's KV cache for beam search: the prompt part once per prompt, the generated
    part once per beam, in buffers allocated once.

    A prompt's G beams share its prompt keys and values, so those are neither copied G times
    nor moved when beams are reordered; only the generated part (a few tokens) is. ``update``
    returns the generated part alone: ``shared_prefix_attention`` attends to the prompt part
    through ``prefix_keys`` / ``prefix_values`` and marks the layer ``attended``.
    """

    def __init__(
        self, prefix_keys: torch.Tensor, prefix_values: torch.Tensor, beams: int, capacity: int
    ):
        super().__init__()
        prompts, heads, _, dim = prefix_keys.shape
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values
        self._k = prefix_keys.new_empty((prompts * beams, heads, capacity, dim))
        self._v = prefix_values.new_empty((prompts * beams, heads, capacity, dim))
        self.length, self.attended = 0, True
        self.dtype, self.device, self.is_initialized = prefix_keys.dtype, prefix_keys.device, True
        self._expose()

    def _expose(self) -> None:
        self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length, self.attended = end, False
        self._expose()
        return self.keys, self.values

    def reorder(self, rows: torch.Tensor) -> None:
        """Row r takes row ``rows[r]``'s generated part (rows of the same prompt)."""
        self._k[:, :, : self.length] = self._k[rows, :, : self.length]
        self._v[:, :, : self.length] = self._v[rows, :, : self.length]
        self._expose()

    def select(self, prompts: torch.Tensor, rows: torch.Tensor) -> None:
        """Keep ``prompts`` and, as the new beam rows, ``rows``: drops finished prompts."""
        self.prefix_keys, self.prefix_values = (
            self.prefix_keys[prompts],
            self.prefix_values[prompts],
        )
        self._k, self._v = self._k[rows], self._v[rows]
        self._expose()


def _beam_cache(cache, prompts: torch.Tensor, beams: int, capacity: int) -> None:
    """After prefill: the prompt part of ``prompts`` kept once, room for ``beams`` beams each."""
    cache.layers = [
        _BeamLayer(
            layer.keys.index_select(0, prompts),
            layer.values.index_select(0, prompts),
            beams,
            capacity,
        )
        for layer in cache.layers
    ]


SHARED_PREFIX_ATTENTION = "rere_shared_prefix"


def shared_prefix_attention(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    scaling: float | None = None,
    dropout: float = 0.0,
    beam_cache=None,
    **kwargs,
):
    """Attention of one decode step of G beams per prompt (``AttentionInterface`` signature).

    ``query``: [P*G, H, 1, D]; ``key`` / ``value``: the generated part [P*G, Hkv, t, D]; the
    prompt part [P, Hkv, L, D] comes from ``beam_cache`` and ``attention_mask`` is its
    additive padding bias [P, 1, 1, L]. The G beams of a prompt attend to its prompt keys in
    one matrix product, instead of G copies of them. Without ``beam_cache`` (prefill, any
    other call) this is plain SDPA.
    """
    if beam_cache is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    refused = [name for name in _UNSUPPORTED_ATTENTION if kwargs.get(name) is not None]
    if refused or query.shape[2] != 1:
        raise SharedPrefixUnsupported(
            f"{type(module).__name__} attends with {', '.join(refused) or 'several new tokens'}: "
            "the shared prompt cache serves plain softmax attention of one new token only"
        )
    layer = beam_cache.layers[module.layer_idx]
    prefix_keys, prefix_values = layer.prefix_keys, layer.prefix_values
    P, kv_heads, L, D = prefix_keys.shape
    rows, heads = query.shape[:2]
    G, rep, t = rows // P, heads // kv_heads, key.shape[2]
    scale = D**-0.5 if scaling is None else scaling
    # [P*G, H, 1, D] -> per prompt and KV head: its G * rep query vectors
    q_beam = query.reshape(rows, kv_heads, rep, D)
    q_prompt = (
        q_beam.reshape(P, G, kv_heads, rep, D).transpose(1, 2).reshape(P, kv_heads, G * rep, D)
    )
    on_prompt = q_prompt @ prefix_keys.transpose(-1, -2) * scale
    on_prompt = on_prompt + attention_mask.to(on_prompt.dtype)
    on_generated = (q_beam @ key.transpose(-1, -2) * scale).reshape(P, G, kv_heads, rep, t)
    on_generated = on_generated.transpose(1, 2).reshape(P, kv_heads, G * rep, t)
    weights = torch.softmax(torch.cat([on_prompt, on_generated], dim=-1).float(), dim=-1)
    weights = weights.to(value.dtype)
    out_prompt = weights[..., :L] @ prefix_values  # [P, Hkv, G*rep, D]
    out_generated = (
        weights[..., L:]
        .reshape(P, kv_heads, G, rep, t)
        .transpose(1, 2)
        .reshape(rows, kv_heads, rep, t)
        @ value
    )  # [P*G, Hkv, rep, D]
    out = out_prompt.reshape(P, kv_heads, G, rep, D).transpose(1, 2).reshape(rows, kv_heads, rep, D)
    out = (out + out_generated).reshape(rows, heads, 1, D).transpose(1, 2)
    layer.attended = True
    return out, None


# decode steps switch the model to this name (``_attention``); masks are built as for SDPA
AttentionInterface.register(SHARED_PREFIX_ATTENTION, shared_prefix_attention)
AttentionMaskInterface.register(SHARED_PREFIX_ATTENTION, sdpa_mask)


@contextmanager
def _attention(model, implementation: str):
    """Run ``model`` with another registered attention implementation, then restore it."""
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = previous


def _search_batch(
    model, prompts, trie: ItemTrie, G: int, length_penalty: float, pad: int, timings
) -> list[Group]:
    device = next(model.parameters()).device
    timings = timings or DecodeTimings()
    clock = time.perf_counter()
    trie = trie if trie.edge_key.device == device else trie.to(device)
    ids, mask = (t.to(device) for t in left_pad(prompts, pad))
    P, prompt_width = ids.shape
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        use_cache=True,
        logits_to_keep=1,  # the last position only, not vocabulary x every prompt token (GBs)
    )
    cache, logits = out.past_key_values, out.logits[:, -1, :]
    clock = timings.add("prefill", clock)

    # The batch holds ``B`` prompts (``batch_prompt``: their index in ``prompts``) with
    # ``width`` beam rows each (1 before the first step, G after). A finished prompt stays in
    # the batch, inert, until half the batch has finished; then the batch is compacted.
    batch_prompt = torch.arange(P, device=device)
    alive = torch.ones(P, dtype=torch.bool, device=device)
    width = 1
    beam_node = torch.zeros(P, dtype=torch.long, device=device)
    beam_score = torch.zeros(P, device=device)
    positions = mask.sum(-1) - 1
    # the prompts' padding as an additive bias, one row per prompt (shared by its beams)
    prompt_bias = torch.zeros(mask.shape, dtype=logits.dtype, device=device)
    prompt_bias = prompt_bias.masked_fill(mask == 0, torch.finfo(logits.dtype).min)[:, None, None]
    # Finished hypotheses per prompt (top G by normalised score), as in HF's beam search.
    fin_score = torch.full((P, G), _NEG, device=device)
    fin_item = torch.full((P, G), -1, dtype=torch.long, device=device)

    for step in range(trie.depth):
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        clock = timings.add("model", clock)
        B = int(batch_prompt.numel())
        live_rows = alive.repeat_interleave(width) & (beam_score > _NEG / 2)

        # ---- candidates: every allowed (beam, token), scored; top 2G per prompt -------------
        owner, token, child = trie.children(torch.where(live_rows, beam_node, -1))
        cand = beam_score[owner] + log_probs[owner, token]
        cand_prompt = owner // width
        by_score = torch.argsort(cand, descending=True, stable=True)
        ranked = by_score[torch.argsort(cand_prompt[by_score], stable=True)]
        counts = torch.bincount(cand_prompt, minlength=B)
        rank = (
            torch.arange(ranked.numel(), device=device)
            - (torch.cumsum(counts, 0) - counts)[cand_prompt[ranked]]
        )
        top, top_rank = ranked[rank < 2 * G], rank[rank < 2 * G]
        top_prompt = cand_prompt[top]
        is_eos = token[top] == trie.eos_token_id

        # ---- finished: EOS among a prompt's top G, merged into its top-G finished ----------
        new = is_eos & (top_rank < G)
        norm = float(step + 1) ** length_penalty
        add_score = torch.full((B, G), _NEG, device=device)
        add_item = torch.full((B, G), -1, dtype=torch.long, device=device)
        add_score[top_prompt[new], top_rank[new]] = cand[top[new]] / norm
        add_item[top_prompt[new], top_rank[new]] = trie.leaf_item[child[top[new]]]
        merged_score = torch.cat([fin_score[batch_prompt], add_score], dim=1)
        merged_item = torch.cat([fin_item[batch_prompt], add_item], dim=1)
        best = torch.topk(merged_score, k=G, dim=1).indices
        fin_score[batch_prompt] = torch.gather(merged_score, 1, best)
        fin_item[batch_prompt] = torch.gather(merged_item, 1, best)

        # ---- running: the best G non-EOS candidates of each prompt's top 2G ----------------
        kept, kept_prompt = top[~is_eos], top_prompt[~is_eos]
        kept_counts = torch.bincount(kept_prompt, minlength=B)
        slot = (
            torch.arange(kept.numel(), device=device)
            - (torch.cumsum(kept_counts, 0) - kept_counts)[kept_prompt]
        )
        kept, kept_prompt, slot = kept[slot < G], kept_prompt[slot < G], slot[slot < G]
        run_score = torch.full((B, G), float("-inf"), device=device)
        run_node = torch.full((B, G), -1, dtype=torch.long, device=device)
        run_token = torch.full((B, G), pad, dtype=torch.long, device=device)
        # a slot with no beam (and every slot of a finished prompt) keeps a row of its own prompt
        own_rows = torch.arange(B, device=device)[:, None] * width + (
            torch.arange(G, device=device) if width == G else 0
        )
        run_parent = own_rows.expand(B, G).clone()
        run_score[kept_prompt, slot] = cand[kept]
        run_node[kept_prompt, slot] = child[kept]
        run_parent[kept_prompt, slot] = owner[kept]
        run_token[kept_prompt, slot] = token[kept]

        # ---- a prompt stops when no running beam can beat its worst finished one (HF rule) -
        fins = fin_score[batch_prompt]
        worst_finished = torch.where((fins > _NEG / 2).all(dim=1), fins.min(dim=1).values, _NEG)
        alive = alive & (run_score[:, 0] / norm > worst_finished)
        clock = timings.add("constraint", clock)
        n_alive = int(alive.sum())
        if n_alive == 0 or step + 1 == trie.depth:
            break

        # ---- next step: move the cache to the surviving beams -------------------------------
        if width == 1 or 2 * n_alive <= B:  # expand after prefill, or drop finished prompts
            keep = torch.nonzero(alive).squeeze(1)
            parent = run_parent[keep].reshape(-1)
            if width == 1:
                _beam_cache(cache, keep, G, trie.depth)
            else:
                for layer in cache.layers:
                    layer.select(keep, parent)
            prompt_bias = prompt_bias[keep]
            batch_prompt, alive = batch_prompt[keep], alive[keep]
            run_score, run_node, run_token = run_score[keep], run_node[keep], run_token[keep]
        else:
            parent = run_parent.reshape(-1)
            for layer in cache.layers:
                layer.reorder(parent)
        width = G
        beam_node, beam_score = run_node.reshape(-1), run_score.reshape(-1)
        positions = positions[parent] + 1
        clock = timings.add("cache", clock)
        with _attention(model, SHARED_PREFIX_ATTENTION):
            out = model(
                input_ids=run_token.reshape(-1, 1),
                # a ready 4D mask: every model's mask builder passes it through as it is
                attention_mask=prompt_bias,
                position_ids=positions[:, None],
                past_key_values=cache,
                use_cache=True,
                beam_cache=cache,
            )
        if not all(layer.attended for layer in cache.layers):
            raise SharedPrefixUnsupported(
                f"{type(model).__name__} does not route attention through transformers' "
                "AttentionInterface: constrained_beam_search cannot share the prompt cache"
            )
        cache, logits = out.past_key_values, out.logits[:, -1, :]

    groups = []
    for p in range(P):
        valid = fin_score[p] > _NEG / 2
        items = fin_item[p][valid].tolist()
        groups.append(
            Group(
                items=items,
                scores=fin_score[p][valid].tolist(),
                completions=[list(trie.sequences[i]) for i in items],
            )
        )
    timings.add("finish", clock)
    return groups


class TrieLogitsProcessor(LogitsProcessor):
    """HF ``LogitsProcessor``: only tokens that continue a catalogue completion are allowed.

    ``prompt_length`` is the (padded) prompt width: generated tokens start there.
    """

    def __init__(self, trie: ItemTrie, prompt_length: int):
        self.trie = trie
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        nodes = self.trie.walk(input_ids[:, self.prompt_length :])
        allowed = self.trie.allowed_mask(nodes)
        # A finished row (past EOS: sampling keeps it in the batch, padded) may only emit EOS,
        # so it never becomes all -inf (NaN probabilities).
        allowed[~allowed.any(dim=-1), self.trie.eos_token_id] = True
        return scores.masked_fill(~allowed, float("-inf"))


def _generate_constrained(
    model, prompts: Sequence[Sequence[int]], trie: ItemTrie, batch_size: int, pad_token_id, **fields
):
    """``model.generate`` under ``TrieLogitsProcessor`` in batches of left-padded prompts;
    yields each batch's output (scores included) and its prompt width."""
    from transformers import LogitsProcessorList

    from rere_pipeline.recsys.backbone import generation_config

    pad = trie.eos_token_id if pad_token_id is None else pad_token_id
    config = generation_config(
        trie.eos_token_id,
        pad,
        max_new_tokens=trie.depth,
        output_scores=True,
        return_dict_in_generate=True,
        **fields,
    )
    device = next(model.parameters()).device
    constraint = trie.to(device)
    with torch.no_grad(), evaluating(model):
        for start in range(0, len(prompts), batch_size):
            ids, mask = (t.to(device) for t in left_pad(prompts[start : start + batch_size], pad))
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=config,
                logits_processor=LogitsProcessorList(
                    [TrieLogitsProcessor(constraint, ids.shape[1])]
                ),
            )
            yield out, ids.shape[1]


def _completion(tokens: list[int], eos_token_id: int) -> tuple[int, ...]:
    return tuple(tokens[: tokens.index(eos_token_id) + 1])


def hf_constrained_beam_search(
    model,
    prompts: Sequence[Sequence[int]],
    trie: ItemTrie,
    num_beams: int,
    *,
    batch_size: int = 8,
    length_penalty: float = 0.0,
    pad_token_id: int | None = None,
) -> list[Group]:
    """The same search through ``model.generate`` + ``TrieLogitsProcessor`` (the reference)."""
    groups = []
    for out, width in _generate_constrained(
        model,
        prompts,
        trie,
        batch_size,
        pad_token_id,
        num_beams=num_beams,
        num_return_sequences=num_beams,
        length_penalty=length_penalty,
        early_stopping=False,
    ):
        rows = out.sequences.shape[0] // num_beams
        seqs = out.sequences[:, width:].reshape(rows, num_beams, -1)
        scores = out.sequences_scores.reshape(rows, num_beams)
        for row in range(rows):
            items, vals, comps = [], [], []
            for beam in range(num_beams):
                tokens = seqs[row, beam].tolist()
                if trie.eos_token_id not in tokens or scores[row, beam] <= _NEG / 2:
                    continue
                completion = _completion(tokens, trie.eos_token_id)
                items.append(trie.item_of(completion))
                vals.append(float(scores[row, beam]))
                comps.append(list(completion))
            groups.append(Group(items=items, scores=vals, completions=comps))
    return groups


def constrained_sampling(
    model,
    prompts: Sequence[Sequence[int]],
    trie: ItemTrie,
    num_samples: int,
    *,
    temperature: float = 1.0,
    batch_size: int = 8,
    pad_token_id: int | None = None,
) -> list[Group]:
    """``num_samples`` catalogue items per prompt drawn by temperature sampling under the trie
    constraint (repeats allowed), each group ordered by its (tempered, constrained)
    log-likelihood."""
    groups = []
    for out, width in _generate_constrained(
        model,
        prompts,
        trie,
        batch_size,
        pad_token_id,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        num_return_sequences=num_samples,
    ):
        steps = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        generated = out.sequences[:, width:]
        for row in range(generated.shape[0] // num_samples):
            drawn = []
            for s in range(row * num_samples, (row + 1) * num_samples):
                completion = _completion(generated[s].tolist(), trie.eos_token_id)
                score = float(steps[s, : len(completion)].sum())
                drawn.append((score, trie.item_of(completion), list(completion)))
            drawn.sort(key=lambda d: -d[0])
            groups.append(
                Group(
                    items=[d[1] for d in drawn],
                    scores=[d[0] for d in drawn],
                    completions=[d[2] for d in drawn],
                )
            )
    return groups
