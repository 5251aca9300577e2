"""ReRe: GRPO whose groups are the catalogue-constrained beams of the policy itself.

``ReReTrainer`` is TRL's ``GRPOTrainer`` with one change to what it learns from, the group
generation (``_generate_single_turn``): instead of sampling ``num_generations = G`` free-text
completions per prompt, it asks the catalogue trie decoder for

* ``beam`` (ReRe): the top-G distinct, valid items of a constrained beam search, in beam
  order — the hardest negatives the policy believes in;
* ``sample``: G constrained samples at ``temperature`` (repeats allowed), ordered by likelihood;
* ``dynamic``: 1.5 G constrained samples, of which every copy of the target is kept and the
  rest filled with the most frequent distinct negatives, ordered by likelihood.

Everything else — rewards and their weights, group-normalised advantages, the clipped
objective (GRPO / DAPO via ``loss_type``, GSPO via ``importance_sampling_level``), the KL to
the reference model (``beta``) and its periodic sync — is TRL's. To know the targets during
generation (for ``dynamic`` and the group statistics) the trainer remembers each batch's
``item_title`` column before handing the batch to TRL.

On a CPU it also computes the policy's log-probabilities with a plain LM-head matmul instead of
TRL's GPU-oriented fused head, running each group's prompt once for its G completions
(``plain_head_logps``, ``completion_hidden``: same values and gradients; 10.7x TRL's head in
``benchmarks/rl_step.py``).

``rows_with_target_in_group`` finds the train rows whose group can teach anything under rule +
ranking (the target among the G beams), for ``rere.informative_only``.

``ValidNDCGCallback`` decodes a fixed valid sample every ``eval_steps``, logs NDCG@10 and
HR@10, keeps the best weights, and stops the run when NDCG@10 collapses. At the end the best
earlier weights replace the final ones only when they are better by more than the sample's
noise (``keep_best_confidence``: a paired bootstrap over the valid rows).
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import DynamicCache, TrainerCallback

from rere_pipeline.recsys.decoding import Group, constrained_beam_search, constrained_sampling
from rere_pipeline.recsys.metrics import (
    VALID_K,
    check_valid_depth,
    ndcg_per_row,
    paired_bootstrap_ratio,
)
from rere_pipeline.recsys.sft import (
    float32_master,
    lora_config,
    lora_enabled,
    released,
    runs_on_cuda,
    uses_plain_head,
)
from rere_pipeline.recsys.trie import ItemTrie

log = logging.getLogger(__name__)

SAMPLING = ("beam", "sample", "dynamic")
OBJECTIVES = {  # rere.objective -> (TRL loss_type, importance_sampling_level)
    "grpo": ("grpo", "token"),
    "dapo": ("dapo", "token"),
    "gspo": ("grpo", "sequence"),
}


def check_choice(key: str, value, options: Sequence) -> None:
    """Refuse ``rere.<key>`` = ``value`` unless it is one of ``options``."""
    if value not in options:
        raise ValueError(f"rere.{key} must be one of {tuple(options)}, not {value!r}")


def keep_best_confidence(params: dict) -> float:
    """``rere.keep_best_confidence`` (default 0.95), refused outside [0, 1)."""
    confidence = float(params.get("keep_best_confidence", 0.95))
    if not 0.0 <= confidence < 1.0:
        raise ValueError(f"rere.keep_best_confidence must be in [0, 1), got {confidence}")
    return confidence


def dynamic_group(drawn: Group, target_item: int | None, size: int) -> Group:
    """Keep the sampled copies of the target, fill up to ``size`` with the distinct negatives,
    most frequent first (cycling through them again when too few are distinct); likelihood
    order. When a negative was drawn, one slot is always left for it: a group of target copies
    alone has no reward spread, so it would teach nothing."""
    score = dict(zip(drawn.items, drawn.scores, strict=True))
    completion = dict(zip(drawn.items, drawn.completions, strict=True))
    counts = Counter(drawn.items)
    negatives = [item for item, _ in counts.most_common() if item != target_item]
    copies = counts.get(target_item, 0)
    keep = [target_item] * (min(copies, size - 1) if negatives else copies)
    fill = negatives or [target_item]
    while len(keep) < size:
        keep += fill[: size - len(keep)]
    keep = sorted(keep[:size], key=lambda i: -score[i])
    return Group(keep, [score[i] for i in keep], [completion[i] for i in keep])


def rows_with_target_in_group(
    model,
    prompts: Sequence[Sequence[int]],
    targets: Sequence[str],
    trie: ItemTrie,
    title_of_item: Sequence[str],
    size: int,
    *,
    needed: int | None = None,
    chunk: int = 256,
    batch_size: int = 32,
    pad_token_id: int | None = None,
    progress: bool = True,
) -> list[int]:
    """Indices (in row order) of the rows whose target title is among ``model``'s top-``size``
    constrained beams: the only ReRe groups with a non-zero advantage under rule + ranking.

    Rows are decoded ``chunk`` at a time until at least ``needed`` are found (every row when
    ``None``).
    """
    from tqdm.auto import tqdm

    found: list[int] = []
    decoded = 0
    bar = tqdm(total=len(prompts), desc="rows with the target in the group", disable=not progress)
    try:
        for start in range(0, len(prompts), chunk):
            if needed is not None and len(found) >= needed:
                break
            stop = min(start + chunk, len(prompts))
            groups = constrained_beam_search(
                model,
                prompts[start:stop],
                trie,
                size,
                batch_size=batch_size,
                pad_token_id=pad_token_id,
            )
            for row, group in enumerate(groups, start):
                if targets[row] in {title_of_item[i] for i in group.items}:
                    found.append(row)
            decoded = stop
            bar.update(stop - start)
            bar.set_postfix(found=len(found))
    finally:
        bar.close()
    log.info("%d of %d decoded rows hold their target in the group", len(found), decoded)
    return found


def completion_hidden(decoder, ids, mask, keep: int) -> torch.Tensor:
    """The decoder's hidden states that predict the last ``keep`` tokens of every row
    (``[rows, keep, hidden]``).

    Rows that share their prompt (a group's G completions) run it once: the prompt's KV cache
    is computed per distinct prompt and indexed out to its rows, and only the completion tokens
    run per row. Same values as running the whole rows (positions and masks are those of the
    whole rows), at a fraction of the work; the gradient flows through the shared cache.
    """
    split = ids.size(1) - keep
    prompts = torch.cat([ids[:, :split], mask[:, :split]], dim=1)
    distinct, row_of = torch.unique(prompts, dim=0, return_inverse=True)
    if split < 1 or len(distinct) == len(ids) or getattr(decoder, "gradient_checkpointing", False):
        return decoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, -keep - 1 : -1]
    shared = decoder(
        input_ids=distinct[:, :split], attention_mask=distinct[:, split:], use_cache=True
    )
    cache = DynamicCache(
        ddp_cache_data=[(k[row_of], v[row_of]) for k, v, *_ in shared.past_key_values],
        config=decoder.config,
    )
    rest = decoder(input_ids=ids[:, split:], attention_mask=mask, past_key_values=cache)
    first = shared.last_hidden_state[row_of, -1:]  # the last prompt token predicts the first
    return torch.cat([first, rest.last_hidden_state[:, :-1]], dim=1)


def plain_head_logps(
    model, input_ids, attention_mask, logits_to_keep, batch_size, temperature, compute_entropy
):
    """Log-probabilities (and entropies) of the last ``logits_to_keep`` tokens with one plain
    LM-head matmul per chunk of rows, each group's prompt run once (``completion_hidden``).

    TRL patches the model with a fused, tiled LM head built for GPUs; on a CPU its torch
    fallback was the largest part of an RL step here (``benchmarks/rl_step.py``), as it was for
    SFT. Same values, returned as TRL's ``(logps, entropies, None)``.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    logps, entropies = [], []
    for start in range(0, input_ids.size(0), batch_size):
        ids = input_ids[start : start + batch_size]
        hidden = completion_hidden(
            decoder, ids, attention_mask[start : start + batch_size], logits_to_keep
        )
        chunk_logps, chunk_entropy = head_logps(
            head, hidden, ids[:, -logits_to_keep:], temperature, compute_entropy
        )
        logps.append(chunk_logps)
        entropies.append(chunk_entropy)
    return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None


def head_logps(head, hidden, targets, temperature: float = 1.0, compute_entropy: bool = False):
    """Log-probabilities of ``targets`` (and the entropies, or ``None``) under the LM head's
    tempered distribution at each of ``hidden``'s positions."""
    log_probs = torch.log_softmax(head(hidden).float() / temperature, dim=-1)
    logps = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logps, -(log_probs.exp() * log_probs).sum(-1) if compute_entropy else None


def _grpo_trainer_class():
    from trl import GRPOTrainer

    class ReReTrainer(GRPOTrainer):
        """``GRPOTrainer`` whose groups come from the catalogue-constrained decoder."""

        def __init__(
            self,
            *args,
            trie: ItemTrie,
            title_of_item: Sequence[str],
            sampling: str = "beam",
            decode_batch_size: int = 32,
            plain_head: bool = False,
            **kwargs,
        ):
            check_choice("sampling", sampling, SAMPLING)
            super().__init__(*args, **kwargs)
            self.trie, self.title_of_item = trie, list(title_of_item)
            self.sampling, self.decode_batch_size = sampling, decode_batch_size
            self.plain_head = plain_head
            self._item_of_title = {t: i for i, t in reversed(list(enumerate(self.title_of_item)))}
            self._batch_targets: list[str] = []

        def _get_per_token_logps_and_entropies(
            self,
            model,
            input_ids,
            attention_mask,
            logits_to_keep,
            batch_size=None,
            compute_entropy=False,
            compute_aux_loss=False,
            **multimodal,
        ):
            if (
                not self.plain_head
                or compute_aux_loss
                or any(v is not None for v in multimodal.values())
            ):
                return super()._get_per_token_logps_and_entropies(
                    model,
                    input_ids,
                    attention_mask,
                    logits_to_keep,
                    batch_size,
                    compute_entropy,
                    compute_aux_loss,
                    **multimodal,
                )
            return plain_head_logps(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size or len(input_ids),
                self.temperature,
                compute_entropy,
            )

        def _tokenize_prompts(self, prompts: list):
            if not all(isinstance(p, str) for p in prompts):
                return super()._tokenize_prompts(prompts)
            # as SFT, evaluation and the row filter encode them (``prompts.encode``): without
            # the special tokens a BOS-adding tokenizer would put in front of every RL prompt
            ids = self.processing_class(text=prompts, add_special_tokens=False)["input_ids"]
            return ids, None, {}

        def _generate_and_score_completions(self, inputs):
            self._batch_targets = [str(x["item_title"]) for x in inputs]
            return super()._generate_and_score_completions(inputs)

        def _generate_single_turn(
            self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False
        ):
            size = num_generations
            if len(prompt_ids) % size or any(
                list(prompt_ids[i]) != list(prompt_ids[i - i % size])
                for i in range(len(prompt_ids))
            ):
                raise RuntimeError("expected each prompt repeated num_generations times in a row")
            prompts = [list(p) for p in prompt_ids[::size]]
            targets = self._batch_targets[::size]
            groups = self._groups(self.accelerator.unwrap_model(self.model), prompts, targets, size)
            self._log_groups(groups, targets)
            completion_ids = [list(c) for g in groups for c in g.completions]
            return completion_ids, None

        def _groups(self, model, prompts, targets, size) -> list[Group]:
            pad = self.processing_class.pad_token_id
            if self.sampling == "beam":
                groups = constrained_beam_search(
                    model,
                    prompts,
                    self.trie,
                    size,
                    batch_size=self.decode_batch_size,
                    pad_token_id=pad,
                )
                short = [len(g.items) for g in groups if len(g.items) < size]
                if short:
                    raise RuntimeError(
                        f"the catalogue trie yields only {min(short)} items for a prompt, fewer than "
                        f"num_generations={size}"
                    )
                return groups
            draws = math.ceil(1.5 * size) if self.sampling == "dynamic" else size
            sampled = constrained_sampling(
                model,
                prompts,
                self.trie,
                draws,
                temperature=self.args.temperature,
                batch_size=max(1, self.decode_batch_size // 4),
                pad_token_id=pad,
            )
            if self.sampling == "sample":
                return sampled
            return [
                dynamic_group(g, self._item_of_title.get(t), size)
                for g, t in zip(sampled, targets, strict=True)
            ]

        def _log_groups(self, groups: list[Group], targets: list[str]) -> None:
            mode = "train" if self.model.training else "eval"
            titles = [[self.title_of_item[i] for i in g.items] for g in groups]
            hit = sum(t in ts for ts, t in zip(titles, targets, strict=True)) / len(groups)
            self._metrics[mode]["rere/target_in_group"].append(hit)
            self._metrics[mode]["rere/distinct_items"].append(
                sum(len(set(ts)) for ts in titles) / len(groups)
            )

    return ReReTrainer


class ValidNDCGCallback(TrainerCallback):
    """Every ``every`` steps: NDCG@10 / HR@10 of constrained beam search on fixed valid prompts.

    Keeps a CPU copy of the best weights and stops training when NDCG@10 falls below
    ``collapse_ratio`` times the value before RL. ``restore_best`` decides, at the end, whether
    those weights replace the final ones. Every trainer checkpoint also holds this state (the
    scores so far and the best weights), so a resumed run still compares with the score before
    RL and can still go back to a best step taken before the interruption: ``resume`` it.
    """

    STATE_FILE, BEST_FILE = "valid_ndcg_state.json", "valid_ndcg_best.safetensors"
    CHECKPOINT_FILES = (STATE_FILE, BEST_FILE)  # what ``on_save`` adds to every checkpoint

    def __init__(
        self,
        prompts: Sequence[Sequence[int]],
        targets: Sequence[str],
        trie: ItemTrie,
        title_of_item: Sequence[str],
        *,
        every: int,
        num_beams: int = 20,
        batch_size: int = 32,
        pad_token_id: int | None = None,
        collapse_ratio: float = 0.5,
        on_score: Callable[[int, dict[str, float], bool], None] | None = None,
    ):
        check_valid_depth(num_beams)
        self.prompts, self.targets = [list(p) for p in prompts], list(targets)
        # ``on_score(step, metrics, last)``, e.g. Optuna's report-and-prune (it may raise to
        # stop training); ``last``: the run's final scoring, its budget spent
        self.on_score = on_score
        self.trie, self.title_of_item = trie, title_of_item
        self.every, self.num_beams, self.batch_size = every, num_beams, batch_size
        self.pad_token_id, self.collapse_ratio = pad_token_id, collapse_ratio
        self.history: list[dict] = []
        self.best_state: dict | None = None
        self.best_step = 0
        # per-row NDCG@10 of the best and of the latest scoring, for the paired comparison
        self.best_rows = self.last_rows = None
        self.trainer = None  # set by ``bind``: where the metrics are logged

    def bind(self, trainer) -> ValidNDCGCallback:
        self.trainer = trainer
        return self

    def score(self, model) -> dict[str, float]:
        groups = constrained_beam_search(
            model,
            self.prompts,
            self.trie,
            self.num_beams,
            batch_size=self.batch_size,
            pad_token_id=self.pad_token_id,
        )
        ranked = [[self.title_of_item[i] for i in g.items] for g in groups]
        rows = self.last_rows = ndcg_per_row(ranked, self.targets, VALID_K)  # 0 exactly for a miss
        return {
            "valid_ndcg_at_10": sum(rows.tolist()) / len(rows),  # as ``ranking_metrics`` sums
            "valid_hr_at_10": int((rows > 0).sum()) / len(rows),
        }

    def _record(self, step: int, model, last: bool = False) -> dict[str, float]:
        metrics = self.score(model)
        best = max((h["valid_ndcg_at_10"] for h in self.history), default=-1.0)
        self.history.append({"step": step, **metrics})
        if metrics["valid_ndcg_at_10"] > best:
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            self.best_step, self.best_rows = step, self.last_rows
        log.info("RL step %d: valid NDCG@10 %.4f, HR@10 %.4f", step, *metrics.values())
        if self.on_score is not None:
            self.on_score(step, metrics, last)
        return metrics

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.history:
            self._record(state.global_step, model)

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir() or self.best_state is None:
            return
        save_file({k: v.contiguous() for k, v in self.best_state.items()}, folder / self.BEST_FILE)
        rows = {"best_rows": self.best_rows, "last_rows": self.last_rows}
        partial = folder / f"{self.STATE_FILE}.partial"  # written last, and whole or not at all
        partial.write_text(
            json.dumps(
                {
                    "history": self.history,
                    "best_step": self.best_step,
                    **{k: None if v is None else v.tolist() for k, v in rows.items()},
                }
            )
        )
        partial.replace(folder / self.STATE_FILE)

    def resume(self, checkpoint: str | None) -> None:
        """Take up the scores and best weights saved with ``checkpoint`` (before training)."""
        folder = Path(checkpoint) if checkpoint else None
        if folder is None or not (folder / self.STATE_FILE).exists():
            if folder is not None:
                log.warning("%s holds no valid scores: the resumed run scores afresh", folder)
            return
        saved = json.loads((folder / self.STATE_FILE).read_text())
        self.history, self.best_step = saved["history"], int(saved["best_step"])
        self.best_rows, self.last_rows = (
            None if saved[k] is None else np.asarray(saved[k], float)
            for k in ("best_rows", "last_rows")
        )
        self.best_state = load_file(folder / self.BEST_FILE)
        log.info(
            "resumed valid scores of steps %s (best: step %d)",
            [h["step"] for h in self.history],
            self.best_step,
        )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every:
            return
        metrics = self._record(state.global_step, model, state.global_step >= state.max_steps)
        if self.trainer is not None:
            self.trainer.log(metrics)
        if metrics["valid_ndcg_at_10"] < self.collapse_ratio * self.history[0]["valid_ndcg_at_10"]:
            log.warning(
                "valid NDCG@10 collapsed to %.4f (from %.4f before RL): stopping",
                metrics["valid_ndcg_at_10"],
                self.history[0]["valid_ndcg_at_10"],
            )
            control.should_training_stop = True

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.history and self.history[-1]["step"] != state.global_step:
            self._record(state.global_step, model, last=True)  # final weights: always scored

    def restore_best(self, model, confidence: float) -> int:
        """Load the best weights seen into ``model`` unless the final ones are as good within
        noise; returns the step of the weights ``model`` ends with (and marks it ``kept`` in
        ``history``).

        With ``confidence`` > 0 the best earlier step replaces the final weights only when the
        paired bootstrap interval of (best / final) valid NDCG@10 lies above 1: a collapse is
        undone, a near-tie the sample happened to order one way is not (on a 1,000-row sample,
        steps whose whole-split scores tie can differ by 3-4%). The best is picked from the m
        earlier steps scored on the same rows, so its one comparison is held to a Bonferroni
        ``1 - (1 - confidence) / m``: then ``1 - confidence`` bounds, approximately (a
        percentile bootstrap) and conservatively (the steps are correlated), the chance that
        noise alone replaces final weights that are as good. ``confidence`` 0 always takes
        the best."""
        if not self.history:
            return 0
        step = self.history[-1]["step"]  # the final weights, always scored
        if self.best_step != step and self._better_than_final(step, confidence):
            model.load_state_dict(self.best_state)
            step = self.best_step
        next(h for h in self.history if h["step"] == step)["kept"] = True
        return step

    def _better_than_final(self, final_step: int, confidence: float) -> bool:
        if not confidence:
            return True
        earlier = len(self.history) - 1  # the steps scored before the final one
        level = 1.0 - (1.0 - confidence) / earlier
        samples = max(1000, math.ceil(20 / (1.0 - level)))  # >= 10 resamples in each tail
        gap = paired_bootstrap_ratio(
            self.best_rows, self.last_rows, samples=samples, confidence=level, seed=0
        )
        log.info(
            "ReRe: valid NDCG@10 of step %d / final step %d = %.3f (%.1f%% interval %.3f - %.3f, "
            "the best of %d earlier steps)",
            self.best_step,
            final_step,
            gap["ratio"],
            level * 100,
            gap["low"],
            gap["high"],
            earlier,
        )
        return gap["low"] > 1.0


def num_iterations(params: dict) -> int:
    """``rere.num_iterations`` (default 1): optimiser steps on each generated batch."""
    passes = int(params.get("num_iterations", 1))
    if passes < 1:
        raise ValueError(f"rere.num_iterations must be at least 1, got {passes}")
    return passes


def grpo_config(params: dict, output_dir: str, max_completion_length: int, use_cuda: bool):
    """TRL ``GRPOConfig`` from ``parameters_rere.yml``."""
    from trl import GRPOConfig

    objective = params.get("objective", "grpo")
    check_choice("objective", objective, tuple(OBJECTIVES))
    loss_type, level = OBJECTIVES[objective]
    size = int(params["num_generations"])
    sync = params.get("sync_ref_model", {}) or {}
    sampling = params.get("sampling", "beam")
    return GRPOConfig(
        output_dir=output_dir,
        num_generations=size,
        per_device_train_batch_size=size * int(params["prompts_per_step"]),
        gradient_accumulation_steps=int(params.get("gradient_accumulation_steps", 1)),
        # passes over each generated batch (the GRPO paper's mu). At 1 the policy is the one
        # that drew the group, so every importance ratio is 1: the clip never acts and GSPO's
        # sequence-level ratio has GRPO's gradient; they differ only from the second pass on
        num_iterations=num_iterations(params),
        num_train_epochs=float(params.get("epochs", 1)),
        max_steps=int(params.get("max_steps", -1)),
        learning_rate=float(params["learning_rate"]),
        lr_scheduler_type=params.get("lr_scheduler_type", "constant"),
        warmup_steps=float(params.get("warmup_ratio", 0.0)),
        beta=float(params["beta"]),
        loss_type=loss_type,
        importance_sampling_level=level,
        epsilon=float(params.get("epsilon", 0.2)),
        epsilon_high=None if params.get("epsilon_high") is None else float(params["epsilon_high"]),
        scale_rewards=params.get("scale_rewards", "group"),
        # TRL scores completions at this temperature; beams are decoded at 1
        temperature=float(params.get("temperature", 1.0)) if sampling != "beam" else 1.0,
        max_completion_length=max_completion_length,
        sync_ref_model=bool(sync.get("enabled", False)),
        ref_model_sync_steps=int(sync.get("steps", 64)),
        ref_model_mixup_alpha=float(sync.get("alpha", 1.0)),
        disable_dropout=True,
        gradient_checkpointing=bool(params.get("gradient_checkpointing", False)),
        remove_unused_columns=False,
        save_strategy="steps",
        save_steps=int(params.get("save_steps", 50)),
        save_total_limit=2,
        save_only_model=False,
        logging_steps=int(params.get("logging_steps", 5)),
        report_to="none",
        seed=int(params.get("seed", 0)),
        data_seed=int(params.get("seed", 0)),
        use_cpu=not use_cuda,
        bf16=bool(use_cuda and params.get("bf16", True)),
        dataloader_num_workers=0,
        disable_tqdm=not params.get("progress", True),
        log_completions=False,
    )


def reference_snapshot(model, directory: Path) -> None:
    """Save ``model`` as the KL reference and point its config there.

    TRL rebuilds the reference policy from ``config._name_or_path``; a model built in memory
    has none, and a path may hold other weights by now, so the starting policy is saved
    (safetensors) and the reference is loaded from exactly that.
    """
    model.save_pretrained(str(directory))
    model.config._name_or_path = str(directory)


def build_trainer(
    model,
    tokenizer,
    dataset,
    reward_funcs: list,
    reward_weights: list[float],
    trie: ItemTrie,
    title_of_item: Sequence[str],
    params: dict,
    output_dir: str,
    callbacks: Sequence[TrainerCallback] = (),
):
    """A ``ReReTrainer`` for ``model`` (trained in place) configured by ``parameters_rere.yml``."""
    use_cuda = runs_on_cuda(params)
    args = grpo_config(params, output_dir, trie.depth, use_cuda)
    args.reward_weights = list(reward_weights)
    peft_config = lora_config(params["lora"]) if lora_enabled(params) else None
    if args.beta > 0 and peft_config is None:
        reference_snapshot(model, Path(output_dir) / "reference")
    return _grpo_trainer_class()(
        model=model,
        reward_funcs=list(reward_funcs),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=list(callbacks),
        peft_config=peft_config,
        trie=trie,
        title_of_item=title_of_item,
        sampling=params.get("sampling", "beam"),
        decode_batch_size=int(params.get("decode_batch_size", 32)),
        plain_head=uses_plain_head(params, use_cuda),
    )


def train_rere(
    model,
    tokenizer,
    dataset,
    reward_funcs: list,
    reward_weights: list[float],
    trie: ItemTrie,
    title_of_item: Sequence[str],
    valid_prompts: Sequence[Sequence[int]],
    valid_targets: Sequence[str],
    params: dict,
    output_dir: str,
    resume_from_checkpoint: str | None = None,
    on_score: Callable[[int, dict[str, float], bool], None] | None = None,
):
    """RL-fine-tune a copy of ``model``; returns (best model, TRL log history, valid history).

    ``on_score(step, metrics, last)`` sees every periodic valid score (e.g. to prune a trial);
    ``last`` marks the final one."""
    callback = ValidNDCGCallback(
        valid_prompts,
        valid_targets,
        trie,
        title_of_item,
        every=int(params.get("eval_steps", 50)),
        num_beams=int(params.get("eval_beam_width", 20)),
        batch_size=int(params.get("decode_batch_size", 32)),
        pad_token_id=tokenizer.pad_token_id,
        collapse_ratio=float(params.get("collapse_ratio", 0.5)),
        on_score=on_score,
    )
    policy = copy.deepcopy(model)
    stored = float32_master(policy, lora=lora_enabled(params))
    trainer = build_trainer(
        policy,
        tokenizer,
        dataset,
        reward_funcs,
        reward_weights,
        trie,
        title_of_item,
        params,
        output_dir,
        callbacks=[callback],
    )
    callback.bind(trainer).resume(resume_from_checkpoint)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trained = trainer.model
    if params.get("keep_best", True):
        kept = callback.restore_best(trained, keep_best_confidence(params))
        log.info("ReRe: ending with the weights of step %d", kept)
    if hasattr(trained, "merge_and_unload"):
        trained = trained.merge_and_unload()
    return released(trained.to(stored)), trainer.state.log_history, callback.history
