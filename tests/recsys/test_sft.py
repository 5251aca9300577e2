"""SFT through TRL: completion-only loss, resumable checkpoints, optional LoRA."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from transformers.trainer_utils import get_last_checkpoint

from rere_pipeline.recsys import sft
from rere_pipeline.recsys.prompts import encode_pairs

PARAMS = {
    "epochs": 1,
    "batch_size": 4,
    "learning_rate": 1e-2,
    "eval_steps": 2,
    "patience": 5,
    "progress": False,
    "warmup_ratio": 0,
    "logging_steps": 1,
}


@pytest.fixture(scope="module")
def pairs(tiny_backbone, template, small_catalogue):
    titles = small_catalogue["title"].tolist()
    histories = [titles[i : i + 3] for i in range(0, 48, 2)]
    return encode_pairs(
        tiny_backbone.tokenizer, template, histories, [titles[i + 3] for i in range(0, 48, 2)]
    )


def _fit(tiny_backbone, pairs, params, output_dir, model=None):
    """``train_sft`` on ``pairs`` (as train and valid), by default on a copy of the tiny model,
    from the newest checkpoint in ``output_dir`` if there is one."""
    model = copy.deepcopy(tiny_backbone.model) if model is None else model
    last = get_last_checkpoint(str(output_dir)) if output_dir.exists() else None
    return sft.train_sft(
        model,
        tiny_backbone.tokenizer,
        pairs,
        pairs,
        params,
        output_dir,
        resume_from_checkpoint=last,
    )


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_sft_changes_the_model_and_logs_losses(tiny_backbone, pairs, tmp_path):
    model = copy.deepcopy(tiny_backbone.model)
    before = _weights(model)
    trained, history, adapter = _fit(
        tiny_backbone, pairs, {**PARAMS, "max_steps": 4}, tmp_path, model
    )
    assert adapter is None
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items())
    assert any("eval_loss" in h for h in history) and any("loss" in h for h in history)


def test_a_prompt_and_title_longer_than_max_length_is_refused(tiny_backbone, pairs, tmp_path):
    # TRL would truncate the end, the title and its EOS, and still train on the row
    longest = max(len(ids) for ids in pairs["input_ids"])
    model = copy.deepcopy(tiny_backbone.model)
    before = _weights(model)
    with pytest.raises(
        ValueError, match=rf"max_length is {longest - 1} tokens, .* holds {longest}"
    ):
        _fit(tiny_backbone, pairs, {**PARAMS, "max_length": longest - 1}, tmp_path, model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_half_precision_weights_train_in_float32_and_come_back_in_their_dtype(
    tiny_backbone, pairs, tmp_path
):
    layer = torch.nn.Linear(2, 2).to(torch.bfloat16)
    assert sft.float32_master(layer, lora=False) == torch.bfloat16
    assert layer.weight.dtype == torch.float32
    adapted = torch.nn.Linear(2, 2).to(torch.bfloat16)
    assert sft.float32_master(adapted, lora=True) == torch.bfloat16
    assert adapted.weight.dtype == torch.bfloat16  # LoRA: frozen weights stay as they are

    model = copy.deepcopy(tiny_backbone.model).to(torch.bfloat16)
    before = _weights(model)
    trained, history, _ = _fit(tiny_backbone, pairs, {**PARAMS, "max_steps": 2}, tmp_path, model)
    assert {v.dtype for v in trained.state_dict().values()} == {torch.bfloat16}
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items())
    assert any("loss" in h for h in history)


def test_a_copy_of_the_trained_model_runs_its_own_weights(tiny_backbone, pairs, tmp_path):
    # TRL patches the model's forward with a closure over the original object; a deep copy
    # (``reinforce`` trains one) must not silently run the original's weights.
    trained, _, _ = _fit(tiny_backbone, pairs, {**PARAMS, "max_steps": 2}, tmp_path)
    twin = copy.deepcopy(trained)
    with torch.no_grad():
        twin.get_output_embeddings().weight.zero_()
        ids = torch.tensor([pairs["input_ids"][0]])
        assert not torch.equal(twin(input_ids=ids).logits, trained(input_ids=ids).logits)
        assert torch.count_nonzero(twin(input_ids=ids).logits) == 0


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tiny_backbone, pairs, tmp_path):
    params = {**PARAMS, "lr_scheduler_type": "constant"}
    _, first, _ = _fit(tiny_backbone, pairs, {**params, "max_steps": 4}, tmp_path)
    assert (tmp_path / "checkpoint-4" / "model.safetensors").exists()
    # A "killed" run is one whose newest checkpoint is short of max_steps. Restart it with a
    # model of zeros: a fresh start would log other losses; a resume restores steps 1-4 from
    # the checkpoint and trains steps 5-6 only.
    zeros = copy.deepcopy(tiny_backbone.model)
    with torch.no_grad():
        for p in zeros.parameters():
            p.zero_()
    resumed, second, _ = _fit(tiny_backbone, pairs, {**params, "max_steps": 6}, tmp_path, zeros)
    losses = lambda history: {h["step"]: h["loss"] for h in history if "loss" in h}  # noqa: E731
    assert {s: v for s, v in losses(second).items() if s <= 4} == losses(first)
    # steps 5-6 continue from the checkpoint's weights, optimizer and data order: the result is
    # the run that was never cut
    uncut, whole, _ = _fit(tiny_backbone, pairs, {**params, "max_steps": 6}, tmp_path / "uncut")
    assert losses(second) == pytest.approx(losses(whole)) and max(losses(second)) == 6
    for key, value in uncut.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value)


def test_lora_trains_adapters_and_merges_them(tiny_backbone, pairs, tmp_path):
    model = copy.deepcopy(tiny_backbone.model)
    before = _weights(model)
    params = {
        **PARAMS,
        "max_steps": 3,
        "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0},
    }
    trained, _, adapter = _fit(tiny_backbone, pairs, params, tmp_path, model)
    assert adapter is not None and type(trained) is type(tiny_backbone.model)
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(before[k], v)]
    assert changed and all("proj" in k for k in changed), (
        "LoRA touches only the adapted linear layers"
    )
    assert "model.embed_tokens.weight" not in changed

    # the saved adapter, applied to the untouched base and merged, gives the same weights
    from peft import PeftModel

    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(adapter)
    for name, content in adapter.items():
        (tmp_path / "adapter").mkdir(exist_ok=True)
        (tmp_path / "adapter" / name).write_bytes(content)
    rebuilt = PeftModel.from_pretrained(
        copy.deepcopy(tiny_backbone.model), str(tmp_path / "adapter")
    ).merge_and_unload()
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[key], value)


def test_early_stopping_chooses_on_the_valid_loss_and_can_be_switched_off(
    tiny_backbone, template, small_catalogue, pairs, tmp_path
):
    # valid rows the training overfits away from (same histories, other targets): their loss
    # falls while the model learns what titles look like, then rises
    titles = small_catalogue["title"].tolist()
    decoys = encode_pairs(
        tiny_backbone.tokenizer,
        template,
        [titles[i : i + 3] for i in range(0, 48, 2)],
        [titles[200 + i] for i in range(0, 48, 2)],
    )
    params = {
        **PARAMS,
        "learning_rate": 3e-2,
        "lr_scheduler_type": "constant",
        "max_steps": 60,
        "eval_steps": 4,
        "patience": 1,
    }

    def fit(early_stopping: bool, output_dir):
        model, history, _ = sft.train_sft(
            copy.deepcopy(tiny_backbone.model),
            tiny_backbone.tokenizer,
            pairs,
            decoys,
            {**params, "early_stopping": early_stopping},
            output_dir,
        )
        losses = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}
        return model, losses

    def same_weights(model, checkpoint) -> bool:
        saved = load_file(str(checkpoint / "model.safetensors"))
        state = model.state_dict()
        return all(torch.equal(state[k], v) for k, v in saved.items())

    chosen, losses = fit(True, tmp_path / "chosen")
    best = min(losses, key=losses.get)
    assert max(losses) < 60, "the rising valid loss stops the run"
    assert same_weights(chosen, tmp_path / "chosen" / f"checkpoint-{best}")

    final, observed = fit(False, tmp_path / "observed")
    assert sorted(observed) == list(range(4, 61, 4)), "the valid loss is still logged"
    assert observed[60] > min(observed.values()), "a choosing run would have kept other weights"
    assert same_weights(final, tmp_path / "observed" / "checkpoint-60")
