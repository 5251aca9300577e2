"""The backbone: a causal LM and its tokenizer, as an ordinary Hugging Face model directory.

Offline default: a byte-level BPE tokenizer trained with ``tokenizers`` on the catalogue
titles and the prompt text, and a small Qwen2-architecture model built from a config. Any
local causal-LM checkpoint (e.g. Qwen2.5-0.5B) loads through the same ``load_backbone``:
``AutoTokenizer`` / ``AutoModelForCausalLM``, local files only, no remote code by default.
Nothing here branches on the model's name.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from rere_pipeline.atomic import replace_directory

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``, with exactly Qwen2's text pipeline.

    ``AutoTokenizer`` loads a ``qwen2`` model directory through ``Qwen2Tokenizer``, which
    rebuilds the normaliser and pre-tokeniser its own way (NFC, Qwen2's split regex, then
    byte-level). Training with the same pipeline makes the saved tokenizer reload exactly.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS, pad_token=PAD, padding_side="left"
    )


def build_model(
    tokenizer,
    *,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    max_positions: int,
    seed: int = 0,
    **extra,
) -> Qwen2ForCausalLM:
    """A freshly initialised Qwen2 causal LM sized by the parameters."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = generation_config(tokenizer.eos_token_id, tokenizer.pad_token_id)
    log.info(
        "built Qwen2 backbone: %.2fM parameters, vocab %d",
        model.num_parameters() / 1e6,
        len(tokenizer),
    )
    return model


def generation_config(eos_token_id: int, pad_token_id: int, **fields) -> GenerationConfig:
    """A ``GenerationConfig`` with every sampling field explicit (no sampling unless asked),
    so a checkpoint's ``generation_config.json`` never turns beam search into sampling."""
    sampling = {"do_sample": False, "temperature": 1.0, "top_k": None, "top_p": None}
    return GenerationConfig(
        **{**sampling, **fields}, eos_token_id=eos_token_id, pad_token_id=pad_token_id
    )


def load_backbone(
    path: str | Path,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
):
    """``Backbone(tokenizer, model)`` from a local Hugging Face directory; never touches a hub."""
    tokenizer = AutoTokenizer.from_pretrained(
        str(path), local_files_only=True, trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(
        str(path),
        local_files_only=True,
        trust_remote_code=trust_remote_code,
        dtype=getattr(torch, dtype) if dtype != "auto" else "auto",
    )
    model.generation_config = generation_config(tokenizer.eos_token_id, tokenizer.pad_token_id)
    model.eval()
    return Backbone(tokenizer, model.to(device))


class Backbone(NamedTuple):
    """A tokenizer and its causal LM, as saved in one Hugging Face directory."""

    tokenizer: object
    model: torch.nn.Module


def save_backbone(backbone: Backbone, path: str | Path) -> None:
    """Write the model (safetensors) and tokenizer to ``path`` atomically: a failed save
    leaves whatever was there before untouched."""

    def write(staging: Path) -> None:
        backbone.model.save_pretrained(staging)
        backbone.tokenizer.save_pretrained(staging)

    replace_directory(Path(path), write)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
