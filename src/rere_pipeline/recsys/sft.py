"""Supervised fine-tuning with TRL's ``SFTTrainer`` on tokenised prompt/completion pairs.

The dataset arrives tokenised (``input_ids`` + ``completion_mask`` from ``prompts.encode_pairs``),
so TRL does not re-tokenise ``prompt + completion`` together; with ``completion_only_loss``
it turns the mask into labels and the loss falls on the completion tokens only.

Early stopping watches the valid loss; checkpoints (safetensors) go to ``output_dir`` every
``eval_steps`` and a killed run resumes from the newest complete one. ``lora.enabled`` trains LoRA
adapters through PEFT instead of all weights; they are merged back for decoding.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from datasets import Dataset
from transformers import EarlyStoppingCallback

log = logging.getLogger(__name__)


def _plain_head_trainer():
    """``SFTTrainer`` whose loss projects to the vocabulary with one plain matmul, only at the
    positions that have a label (the completion).

    TRL's fused LM head tiles the projection for GPUs (Triton); on a CPU its torch fallback
    dominated a training step here (0.70 s of a 0.70 s step for batch 32 x 135 tokens,
    against 0.16 s for this loss: ``benchmarks/sft_step.py``). Only ``compute_loss`` changes.
    """
    from trl import SFTTrainer

    class PlainHeadSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            hidden = base.get_decoder()(
                input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")
            ).last_hidden_state
            labels = inputs["labels"][:, 1:]
            keep = labels != -100
            logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()
            targets = labels[keep]
            loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
            loss = loss / torch.as_tensor(
                num_items_in_batch if num_items_in_batch is not None else targets.numel()
            ).clamp(min=1)
            mode = "train" if model.training else "eval"
            self._metrics[mode]["mean_token_accuracy"].append(
                (logits.argmax(-1) == targets).float().mean().item()
            )
            return (loss, {"logits": logits}) if return_outputs else loss

    return PlainHeadSFTTrainer


def runs_on_cuda(params: dict) -> bool:
    """Train on the GPU when there is one, unless ``device: cpu``."""
    return torch.cuda.is_available() and params.get("device", "auto") != "cpu"


def uses_plain_head(params: dict, use_cuda: bool) -> bool:
    """``loss_head``: plain (one LM-head matmul, faster on CPU), fused (TRL's tiled head, for
    GPUs) or auto (plain on CPU)."""
    head = params.get("loss_head", "auto")
    return head == "plain" or (head == "auto" and not use_cuda)


def released(model):
    """``model`` as a plain Hugging Face model again, in eval mode, once a TRL trainer is done.

    TRL's trainers patch the model with an instance-level ``forward`` (a fused LM head) whose
    closure calls the *original* object's forward. A deep copy of a patched model (``reinforce``
    trains a copy of the model it is given) would then decode with the original's weights and
    config, not its own. This drops the patch; the class's ``forward`` is the same computation.
    """
    patched = model.__dict__.get("forward")
    code = getattr(getattr(patched, "__func__", None), "__code__", None)
    if code is not None and "trl" in Path(code.co_filename).parts:
        del model.forward
    return model.eval()


def float32_master(model, lora: bool) -> torch.dtype:
    """Cast a half-precision ``model`` to float32 for a full fine-tune; returns the dtype it
    was stored in, to cast back to once training ends.

    AdamW updates to bf16 weights are lost below their rounding step (8 mantissa bits:
    ``bf16(0.03) + 1e-5 == 0.03``), so at the paper's lr 1e-5 most weights would never move.
    Training keeps float32 master weights and the trainer's ``bf16`` autocast (CUDA) supplies
    the speed. LoRA trains float32 adapters on frozen weights and needs no cast."""
    dtype = next(model.parameters()).dtype
    if not lora and dtype in (torch.bfloat16, torch.float16):
        log.info("%s weights: training float32 master weights, saved back as %s", dtype, dtype)
        model.float()
    return dtype


def lora_enabled(params: dict) -> bool:
    """Whether a trainer's parameters (``sft`` / ``rere``) ask for a LoRA adapter."""
    return bool((params.get("lora") or {}).get("enabled"))


def lora_config(params: dict):
    from peft import LoraConfig

    return LoraConfig(
        r=int(params.get("r", 8)),
        lora_alpha=int(params.get("alpha", 16)),
        lora_dropout=float(params.get("dropout", 0.05)),
        target_modules=params.get("target_modules", "all-linear"),
        task_type="CAUSAL_LM",
    )


def adapter_files(peft_model) -> dict[str, bytes]:
    """The files ``save_pretrained`` writes for a PEFT model's adapter (before any merge)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        peft_model.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def to_dataset(columns: dict[str, list]) -> Dataset:
    return Dataset.from_dict(
        {"input_ids": columns["input_ids"], "completion_mask": columns["completion_mask"]}
    )


def train_sft(
    model,
    tokenizer,
    train: dict[str, list],
    valid: dict[str, list],
    params: dict,
    output_dir: str | Path,
    resume_from_checkpoint: str | None = None,
):
    """Fine-tune ``model`` (from ``resume_from_checkpoint`` when given); returns (model with
    any adapters merged, TRL's log history, the LoRA adapter's files as ``{name: bytes}`` or
    None).

    The valid loss is logged every ``eval_steps``. With ``early_stopping`` (the default) it
    also chooses: training stops after ``patience`` evaluations without improvement and ends
    with the best checkpoint's weights. Without, the run trains its whole budget and ends with
    its final weights, the valid rows only observed."""
    from trl import SFTConfig, SFTTrainer

    max_length = int(params.get("max_length", 1024))
    for split, columns in (("train", train), ("valid", valid)):
        longest = max((len(ids) for ids in columns["input_ids"]), default=0)
        if longest > max_length:
            raise ValueError(
                f"sft.max_length is {max_length} tokens, but a {split} prompt with its title holds "
                f"{longest}: TRL would cut the title's end and its EOS. Raise sft.max_length or "
                "lower prompts.max_history"
            )
    output_dir = Path(output_dir)
    use_cuda = runs_on_cuda(params)
    early_stopping = bool(params.get("early_stopping", True))
    args = SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=float(params["epochs"]),
        max_steps=int(params.get("max_steps", -1)),
        per_device_train_batch_size=int(params["batch_size"]),
        per_device_eval_batch_size=int(params.get("eval_batch_size", params["batch_size"])),
        gradient_accumulation_steps=int(params.get("gradient_accumulation_steps", 1)),
        learning_rate=float(params["learning_rate"]),
        lr_scheduler_type=params.get("lr_scheduler_type", "cosine"),
        warmup_steps=float(params.get("warmup_ratio", 0.03)),
        weight_decay=float(params.get("weight_decay", 0.0)),
        max_length=max_length,
        completion_only_loss=True,
        train_sampling_strategy="group_by_length"
        if params.get("group_by_length", True)
        else "random",
        eval_strategy="steps",
        eval_steps=int(params["eval_steps"]),
        save_strategy="steps",
        save_steps=int(params["eval_steps"]),
        save_total_limit=2,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=int(params.get("logging_steps", 20)),
        report_to="none",  # tracked by kedro-mlflow from the returned history
        seed=int(params.get("seed", 0)),
        data_seed=int(params.get("seed", 0)),
        use_cpu=not use_cuda,
        bf16=bool(use_cuda and params.get("bf16", True)),
        dataloader_num_workers=0,
        dataset_num_proc=None,
        disable_tqdm=not params.get("progress", True),
    )
    peft_config = lora_config(params["lora"]) if lora_enabled(params) else None
    stored = float32_master(model, lora=peft_config is not None)
    trainer = (_plain_head_trainer() if uses_plain_head(params, use_cuda) else SFTTrainer)(
        model=model,
        args=args,
        train_dataset=to_dataset(train),
        eval_dataset=to_dataset(valid),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=int(params.get("patience", 2)))]
        if early_stopping
        else [],
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trained = trainer.model
    adapter = None
    if peft_config is not None:
        adapter = adapter_files(trained)
        trained = trained.merge_and_unload()
    return released(trained.to(stored)), trainer.state.log_history, adapter
