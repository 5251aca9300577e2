"""SASRec (Kang & McAuley 2018): a causal self-attention model of item sequences.

Reads top to bottom: config -> model -> batching -> training -> ranking -> scoring -> files.

* Item ids are the catalogue ids ``0 .. num_items - 1``; inside the model an item is
  ``item_id + 1`` so that 0 is padding. Histories are left-padded to ``max_len`` (the most
  recent item is always the last position) and truncated to their last ``max_len`` items.
* Scores of the next item are dot products of the last hidden state with the (tied) item
  embeddings, over the whole catalogue; training is full-softmax cross-entropy.
* Weights are xavier-initialised: N(0, 1) embeddings did not learn in a prototype.
* Files are ``model.safetensors`` + ``config.json``; never pickle.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from rere_pipeline.recsys.params import dataclass_from_params

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class SASRecConfig:
    """Shape of the model."""

    num_items: int
    max_len: int = 10
    hidden: int = 64
    layers: int = 2
    heads: int = 1
    dropout: float = 0.2
    ffn_mult: int = 1  # the paper's point-wise feed-forward keeps the width (hidden -> hidden)


@dataclass
class SASRecTrainParams:
    """How to train: Adam, full softmax, early stopping on valid NDCG@10."""

    lr: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 10  # epochs without a better valid NDCG@10 before stopping
    weight_decay: float = 0.0
    per_position: bool = True  # every history position is a target too (seq-to-seq training)
    seed: int = 42
    eval_batch_size: int = 1024

    @classmethod
    def from_mapping(cls, params: Mapping | SASRecTrainParams) -> SASRecTrainParams:
        if isinstance(params, cls):
            return params
        return dataclass_from_params(cls, params, "baselines.sasrec.train")


# ---------------------------------------------------------------------------------- model


class Block(nn.Module):
    """Pre-LayerNorm causal self-attention + point-wise feed-forward, both residual."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        if config.hidden % config.heads:
            raise ValueError(f"hidden {config.hidden} is not divisible by heads {config.heads}")
        self.heads = config.heads
        self.ln_1 = nn.LayerNorm(config.hidden)
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)
        self.proj = nn.Linear(config.hidden, config.hidden)
        self.ln_2 = nn.LayerNorm(config.hidden)
        width = config.ffn_mult * config.hidden
        self.ffn = nn.Sequential(
            nn.Linear(config.hidden, width),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(width, config.hidden),
        )
        self.dropout = nn.Dropout(config.dropout)
        self.attn_dropout = config.dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.attn_dropout if self.training else 0.0
        )
        x = x + self.dropout(self.proj(y.transpose(1, 2).reshape(b, t, c)))
        return x + self.dropout(self.ffn(self.ln_2(x)))


class SASRec(nn.Module):
    """Item + position embeddings -> causal blocks -> LayerNorm -> dot with item embeddings."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        self.item_emb = nn.Embedding(config.num_items + 1, config.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, config.hidden)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.hidden)
        for name, param in self.named_parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
            elif name.endswith("bias"):
                nn.init.zeros_(param)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def hidden_states(self, seq: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` padded internal ids (0 = padding, left) -> ``[B, T, hidden]``."""
        b, t = seq.shape
        real = seq != 0
        # A position sees itself and earlier real items; a padding position only itself (no NaN).
        causal = torch.ones(t, t, dtype=torch.bool, device=seq.device).tril()
        eye = torch.eye(t, dtype=torch.bool, device=seq.device)
        allowed = (causal & (real[:, None, :] | eye))[:, None]  # [B, 1, T, T]
        positions = torch.arange(t, device=seq.device)
        x = self.item_emb(seq) * math.sqrt(self.config.hidden) + self.pos_emb(positions)
        x = self.emb_dropout(x) * real[..., None]
        for block in self.blocks:
            x = block(x, allowed) * real[..., None]
        return self.ln_f(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states -> scores of every catalogue item (padding excluded)."""
        return hidden @ self.item_emb.weight[1:].T

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` -> ``[B, T, num_items]`` next-item scores at every position."""
        return self.logits(self.hidden_states(seq))

    @torch.no_grad()
    def score(self, histories: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
        """Scores ``[B, num_items]`` of every catalogue item as the next one after each history."""
        seq = (
            histories
            if isinstance(histories, torch.Tensor)
            else pad_histories(histories, self.config.max_len)
        )
        was_training = self.training
        self.eval()
        out = self.logits(self.hidden_states(seq.to(self.item_emb.weight.device))[:, -1])
        self.train(was_training)
        return out


# ---------------------------------------------------------------------------------- batches


def pad_histories(histories: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """Histories of catalogue ids -> ``[B, max_len]`` internal ids, left-padded with 0."""
    out = np.zeros((len(histories), max_len), dtype=np.int64)
    for row, history in enumerate(histories):
        tail = np.asarray(history, dtype=np.int64)[-max_len:] if len(history) else []
        if len(tail):
            out[row, max_len - len(tail) :] = tail + 1
    return torch.from_numpy(out)


def training_tensors(
    rows: pd.DataFrame, max_len: int, per_position: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``[N, max_len]`` and labels ``[N, max_len]`` (catalogue ids; -100 = no target).

    The sequence ``history + [target]`` shifted by one: input position t predicts item t + 1.
    Without ``per_position`` only the last position (the row's target) is a label.
    """
    sequences = [
        [*history, target]
        for history, target in zip(rows["history_item_id"], rows["item_id"], strict=True)
    ]
    inputs = pad_histories([s[:-1] for s in sequences], max_len)
    labels = torch.full((len(sequences), max_len), -100, dtype=torch.int64)
    for row, seq in enumerate(sequences):
        targets = seq[1:][-max_len:] if per_position else seq[-1:]
        labels[row, max_len - len(targets) :] = torch.as_tensor(targets, dtype=torch.int64)
    return inputs, labels


# ---------------------------------------------------------------------------------- training


@torch.no_grad()
def target_ranks(model: SASRec, rows: pd.DataFrame, batch_size: int = 1024) -> torch.Tensor:
    """0-based rank of each row's target item among all items (ties count against it)."""
    ranks = []
    for start in range(0, len(rows), batch_size):
        chunk = rows.iloc[start : start + batch_size]
        scores = model.score(chunk["history_item_id"].tolist())
        target = torch.from_numpy(chunk["item_id"].to_numpy(dtype=np.int64, copy=True))
        target = target.to(scores.device)  # gather wants its index on the scores' device
        target_score = scores.gather(1, target[:, None])
        ranks.append((scores > target_score).sum(1) + (scores == target_score).sum(1) - 1)
    return torch.cat(ranks)


def id_metrics(ranks: torch.Tensor, k: int = 10) -> dict[str, float]:
    """HR@k and NDCG@k by item id from target ranks."""
    hit = ranks < k
    ndcg = torch.where(hit, 1.0 / torch.log2(ranks.double() + 2), torch.zeros(()))
    return {f"hr@{k}": hit.double().mean().item(), f"ndcg@{k}": ndcg.mean().item()}


def train_sasrec(
    train_rows: pd.DataFrame,
    valid_rows: pd.DataFrame,
    config: SASRecConfig,
    train_params: Mapping | SASRecTrainParams,
    progress: bool = True,
) -> tuple[SASRec, list[dict]]:
    """Train on ``train_rows``; keep the epoch with the best valid NDCG@10 (by item id).

    Returns the model (best weights, eval mode) and one dict per epoch: ``epoch``,
    ``train_loss``, ``valid_ndcg@10``, ``valid_hr@10``, ``seconds``.
    """
    params = SASRecTrainParams.from_mapping(train_params)
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    model = SASRec(config)
    inputs, labels = training_tensors(train_rows, config.max_len, params.per_position)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)

    history: list[dict] = []
    best_ndcg, best_state, stale = -1.0, copy.deepcopy(model.state_dict()), 0
    bar = tqdm(range(1, params.max_epochs + 1), desc="sasrec", unit="epoch", disable=not progress)
    for epoch in bar:
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(inputs), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(order), params.batch_size):
            batch = order[start : start + params.batch_size]
            logits = model(inputs[batch])
            target = labels[batch]
            loss = F.cross_entropy(logits.reshape(-1, config.num_items), target.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = int((target != -100).sum())
            total, count = total + loss.item() * n, count + n
        model.eval()
        valid = id_metrics(target_ranks(model, valid_rows, params.eval_batch_size))
        record = {
            "epoch": epoch,
            "train_loss": total / max(count, 1),
            "valid_ndcg@10": valid["ndcg@10"],
            "valid_hr@10": valid["hr@10"],
            "seconds": time.perf_counter() - started,
        }
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", ndcg10=f"{valid['ndcg@10']:.4f}")
        if valid["ndcg@10"] > best_ndcg:
            best_ndcg, best_state, stale = valid["ndcg@10"], copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= params.patience:
                log.info("sasrec: early stop after epoch %d (patience %d)", epoch, params.patience)
                break
    best_epoch = max(history, key=lambda r: r["valid_ndcg@10"])["epoch"] if history else 0
    log.info("sasrec: best valid NDCG@10 %.4f at epoch %d", best_ndcg, best_epoch)
    model.load_state_dict(best_state)
    model.eval()
    return model, history


# ---------------------------------------------------------------------------------- ranking


@torch.no_grad()
def rank(
    model: SASRec,
    rows: pd.DataFrame | Sequence[Sequence[int]],
    k: int = 20,
    batch_size: int = 1024,
    exclude_history: bool = False,
) -> list[list[int]]:
    """Top-``k`` catalogue ids per row (rows: a frame with ``history_item_id`` or histories).

    The whole catalogue is ranked; ``exclude_history`` drops the row's own history items.
    """
    histories = list(rows["history_item_id"]) if isinstance(rows, pd.DataFrame) else list(rows)
    out: list[list[int]] = []
    for start in range(0, len(histories), batch_size):
        chunk = histories[start : start + batch_size]
        scores = model.score(chunk)
        if exclude_history:
            for row, history in enumerate(chunk):
                if len(history):
                    scores[row, torch.from_numpy(np.array(history, dtype=np.int64))] = -torch.inf
        out.extend(scores.topk(min(k, scores.shape[1]), dim=1).indices.tolist())
    return out


# ---------------------------------------------------------------------------------- files


def save_sasrec(model: SASRec, directory: str | Path) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(asdict(model.config), indent=2) + "\n")


def load_sasrec(directory: str | Path) -> SASRec:
    """The model saved by ``save_sasrec`` in ``directory``, in eval mode."""
    directory = Path(directory)
    config = SASRecConfig(**json.loads((directory / CONFIG_FILE).read_text()))
    model = SASRec(config)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    model.eval()
    return model
