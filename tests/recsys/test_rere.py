"""The ReRe trainer: constrained-beam groups inside TRL's GRPO loop."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset

from rere_pipeline.pipelines.checkpoints import TRAINER_STATE
from rere_pipeline.pipelines.rere.nodes import (
    informative_rows,
    rl_rows,
    rows_needed,
    training_rows,
)
from rere_pipeline.recsys import rere, rewards
from rere_pipeline.recsys.decoding import Group, constrained_beam_search
from rere_pipeline.recsys.recommend import CatalogueRecommender

G = 4
PARAMS = {
    "num_generations": G,
    "prompts_per_step": 2,
    "learning_rate": 5e-3,
    "beta": 1e-3,
    "objective": "grpo",
    "sampling": "beam",
    "eval_steps": 2,
    "eval_beam_width": 10,
    "save_steps": 2,
    "logging_steps": 1,
    "progress": False,
    "collapse_ratio": 0.0,
}


@pytest.fixture(scope="module")
def recommender(tiny_backbone, small_catalogue, template):
    return CatalogueRecommender(
        tiny_backbone.tokenizer, tiny_backbone.model, small_catalogue, template, num_beams=G
    )


@pytest.fixture(scope="module")
def rows(small_catalogue, recommender):
    """Histories whose target is the untrained model's second beam: every group holds its
    target, so the rewards (and the gradients) are not all zero."""
    titles = small_catalogue["title"].tolist()
    histories = [titles[i : i + 3] for i in range(0, 40, 3)]
    return histories, [rec.titles[1] for rec in recommender.recommend(histories)]


@pytest.fixture(scope="module")
def dataset(rows, template):
    histories, targets = rows
    return Dataset.from_dict(
        {"prompt": [template.prompt(h) for h in histories], "item_title": targets}
    )


def _rewards(recommender, weights=None):
    index = rewards.CatalogueIndex(
        dict(zip(recommender.trie.sequences, recommender.titles, strict=True)), {}
    )
    return rewards.build_rewards(weights or {"rule": 1.0, "ranking": 1.0}, index, G)


def _trainer(recommender, tiny_backbone, dataset, tmp_path, **params):
    """A one-step ``ReReTrainer`` on the tiny model (not trained here)."""
    funcs, weights = _rewards(recommender)
    return rere.build_trainer(
        copy.deepcopy(tiny_backbone.model),
        tiny_backbone.tokenizer,
        dataset,
        funcs,
        weights,
        recommender.trie,
        recommender.titles,
        {**PARAMS, "max_steps": 1, **params},
        str(tmp_path),
    )


def _train(
    recommender,
    tiny_backbone,
    dataset,
    rows,
    tmp_path,
    params,
    resume=None,
    model=None,
    on_score=None,
):
    funcs, weights = _rewards(recommender)
    histories, targets = rows
    return rere.train_rere(
        model if model is not None else copy.deepcopy(tiny_backbone.model),
        tiny_backbone.tokenizer,
        dataset,
        funcs,
        weights,
        recommender.trie,
        recommender.titles,
        recommender.prompt_ids(histories[:6]),
        targets[:6],
        params,
        str(tmp_path),
        resume_from_checkpoint=resume,
        on_score=on_score,
    )


def _config(tmp_path, **params):
    """TRL's ``GRPOConfig`` for ``PARAMS`` with ``params`` over them."""
    return rere.grpo_config({**PARAMS, **params}, str(tmp_path), 16, use_cuda=False)


def _first_groups(trainer, recommender, rows, n: int = 3):
    """The trainer's groups for the first ``n`` rows, generated as inside its training loop:
    (prompt ids, completion ids, G per prompt in a row)."""
    histories, targets = rows
    prompts = recommender.prompt_ids(histories[:n])
    trainer._batch_targets = [t for t in targets[:n] for _ in range(G)]
    trainer.model.train()  # its metrics are train metrics; decoding itself runs in eval mode
    completion_ids, _ = trainer._generate_single_turn(
        [p for p in prompts for _ in range(G)], None, {}, G
    )
    return prompts, completion_ids


def test_group_generation_is_the_constrained_beam_search(
    recommender, tiny_backbone, dataset, rows, tmp_path
):
    trainer = _trainer(recommender, tiny_backbone, dataset, tmp_path)
    prompts, completion_ids = _first_groups(trainer, recommender, rows)
    expected = constrained_beam_search(tiny_backbone.model, prompts, recommender.trie, G)
    assert completion_ids == [c for g in expected for c in g.completions]
    valid = set(recommender.trie.sequences)
    for start in range(0, len(completion_ids), G):
        group = [tuple(c) for c in completion_ids[start : start + G]]
        assert len(group) == G and len(set(group)) == G and set(group) <= valid
    assert trainer._metrics["train"]["rere/distinct_items"] == [G]
    assert trainer.model.training
    with pytest.raises(RuntimeError, match="repeated num_generations"):
        trainer._generate_single_turn(prompts, None, {}, G)


def test_rl_prompts_are_encoded_as_sft_and_evaluation_encode_them(
    recommender, tiny_backbone, dataset, rows, tmp_path
):
    from tokenizers.processors import TemplateProcessing

    trainer = _trainer(recommender, tiny_backbone, dataset, tmp_path)
    bos = tiny_backbone.tokenizer.pad_token  # any token will do
    trainer.processing_class = copy.deepcopy(tiny_backbone.tokenizer)
    trainer.processing_class._tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A",
        special_tokens=[(bos, tiny_backbone.tokenizer.pad_token_id)],
    )
    histories, _ = rows
    texts = dataset["prompt"][:3]
    assert (
        trainer.processing_class(text=texts)["input_ids"][0][0]
        == tiny_backbone.tokenizer.pad_token_id
    )
    ids, images, fields = trainer._tokenize_prompts(texts)
    assert ids == recommender.prompt_ids(histories[:3]) and images is None and fields == {}


def test_dynamic_group_keeps_target_copies_and_fills_with_frequent_negatives():
    drawn = Group(
        items=[5, 7, 5, 9, 7, 7],
        scores=[-1.0, -2.0, -1.0, -3.0, -2.0, -2.0],
        completions=[[5], [7], [5], [9], [7], [7]],
    )
    got = rere.dynamic_group(drawn, target_item=9, size=4)
    assert sorted(got.items) == [5, 7, 7, 9]  # the target's copy, then 7 (x3) and 5 (x2) fill
    assert got.scores == sorted(got.scores, reverse=True)
    # no target drawn: the three distinct negatives, best first
    assert rere.dynamic_group(drawn, target_item=1, size=3).items == [5, 7, 9]
    # too few distinct negatives: they are cycled through, most frequent first
    assert sorted(rere.dynamic_group(drawn, target_item=9, size=6).items) == [5, 5, 7, 7, 7, 9]


def test_a_dynamic_group_always_keeps_a_drawn_negative():
    # the target (0) drawn more often than the group holds: a group of copies alone would have
    # no reward spread, so the one negative drawn keeps its slot
    drawn = Group([0] * 5 + [1], [-1.0] * 5 + [-4.0], [[0]] * 5 + [[1]])
    assert rere.dynamic_group(drawn, target_item=0, size=4).items == [0, 0, 0, 1]
    only_target = Group([0] * 5, [-1.0] * 5, [[0]] * 5)
    assert rere.dynamic_group(only_target, target_item=0, size=4).items == [0] * 4


def test_a_few_rl_steps_change_the_policy_and_log_the_metrics(
    recommender, tiny_backbone, dataset, rows, tmp_path
):
    scored = []  # what ``on_score`` (tuning's pruner) is told: step, and whether it is the last
    model, history, valid = _train(
        recommender,
        tiny_backbone,
        dataset,
        rows,
        tmp_path,
        {**PARAMS, "max_steps": 4, "keep_best": False},
        on_score=lambda step, metrics, last: scored.append((step, last)),
    )
    before = tiny_backbone.model.state_dict()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    logged = {k for h in history for k in h}
    for key in (
        "rewards/rule/mean",
        "rewards/ranking/mean",
        "reward_std",
        "kl",
        "rere/target_in_group",
        "rere/distinct_items",
        "valid_ndcg_at_10",
    ):
        assert key in logged, key
    assert [v["step"] for v in valid] == [0, 2, 4]
    assert scored == [(0, False), (2, False), (4, True)]
    assert next(h["rere/target_in_group"] for h in history if "rere/target_in_group" in h) == 1.0
    assert next(h["rewards/rule/mean"] for h in history if "rewards/rule/mean" in h) == 1 / G


def test_rl_steps_move_the_target_up_the_beam(recommender, tiny_backbone, rows, template, tmp_path):
    # One history whose target is the second beam (see ``rows``): rule + ranking rewards push
    # the target up and the first beam (a negative) down, so the target takes the lead.
    histories, targets = rows
    history, target = histories[0], targets[0]
    one_row = Dataset.from_dict(
        {"prompt": [template.prompt(history)] * 8, "item_title": [target] * 8}
    )
    prompt = recommender.prompt_ids([history])
    pad = tiny_backbone.tokenizer.pad_token_id

    def beams(model):
        group = constrained_beam_search(model, prompt, recommender.trie, G, pad_token_id=pad)[0]
        return [recommender.titles[i] for i in group.items]

    before = beams(tiny_backbone.model)
    assert before[1] == target
    model, _, _ = _train(
        recommender,
        tiny_backbone,
        one_row,
        ([history], [target]),
        tmp_path,
        {**PARAMS, "max_steps": 3, "keep_best": False, "eval_steps": 100},
    )
    after = beams(model)
    assert after[0] == target


def test_informative_rows_are_those_whose_target_is_in_the_group(recommender, tiny_backbone, rows):
    histories, targets = rows
    prompts = recommender.prompt_ids(histories)
    pad = tiny_backbone.tokenizer.pad_token_id
    groups = constrained_beam_search(
        tiny_backbone.model, prompts, recommender.trie, G, pad_token_id=pad
    )
    outside = [
        next(t for t in recommender.titles if t not in {recommender.titles[i] for i in g.items})
        for g in groups
    ]
    # every third row keeps its in-group target; the others get a title outside their beams
    mixed = [t if i % 3 == 0 else o for i, (t, o) in enumerate(zip(targets, outside, strict=True))]
    args = (tiny_backbone.model, prompts, mixed, recommender.trie, recommender.titles, G)
    found = rere.rows_with_target_in_group(*args, pad_token_id=pad, progress=False)
    assert found == list(range(0, len(prompts), 3))
    # decoding stops at the first chunk that brings the count to ``needed``
    early = rere.rows_with_target_in_group(
        *args, needed=2, chunk=4, pad_token_id=pad, progress=False
    )
    assert early == [0, 3]
    # the ``rere`` node keeps exactly those rows, and refuses to train on none
    table = pd.DataFrame({"prompt_ids": prompts, "item_title": mixed})
    params = {"num_generations": G, "prompts_per_step": 2, "max_steps": -1, "progress": False}
    kept = informative_rows(table, tiny_backbone.model, recommender, params)
    assert sorted(kept.index) == found
    with pytest.raises(ValueError, match="informative_only"):
        informative_rows(table.iloc[[1, 2]], tiny_backbone.model, recommender, params)


def test_runs_with_the_same_row_parameters_share_the_filtered_rows(
    recommender, tiny_backbone, rows, template, monkeypatch
):
    histories, targets = rows
    n = len(histories)
    prompts_train = pd.DataFrame(
        {
            "user_id": range(n),
            "item_id": range(n),
            "prompt": [template.prompt(h) for h in histories],
            "prompt_ids": recommender.prompt_ids(histories),
            "item_title": targets,
        }
    )
    train = pd.DataFrame(
        {
            "user_id": range(n),
            "item_id": range(n),
            "history_item_id": [[1]] * n,
            "timestamp": range(n),
        }
    )
    decoded = []
    filter_rows = rere.rows_with_target_in_group

    def counting(model, prompts, *args, **kwargs):
        decoded.append(len(prompts))
        return filter_rows(model, prompts, *args, **kwargs)

    monkeypatch.setattr(rere, "rows_with_target_in_group", counting)
    params = {
        "informative_only": True,
        "num_generations": G,
        "prompts_per_step": 2,
        "max_steps": -1,
        "seed": 0,
        "progress": False,
    }
    cache: dict = {}

    def filtered(**overrides):
        model = tiny_backbone.model
        return training_rows(
            prompts_train, train, model, recommender, {**params, **overrides}, cache
        )

    first = filtered()
    assert decoded == [n] and len(first) == n  # every target is the second beam
    # another arm (rewards, sampling) of the same seed: the same rows, not decoded again
    assert filtered(rewards={"rule": 1.0}, sampling="sample") is first and decoded == [n]
    # another seed or group size decides other rows: decoded again
    filtered(seed=1)
    filtered(num_generations=G - 1)
    assert decoded == [n, n, n]
    # ``recent``: decoded newest first, and ``train_rows`` keeps the newest rows
    recent = filtered(row_order="recent")
    assert list(recent["timestamp"]) == list(range(n - 1, -1, -1))
    newest = filtered(row_order="recent", train_rows=3, informative_only=False)
    assert list(newest["timestamp"]) == [n - 1, n - 2, n - 3]
    with pytest.raises(ValueError, match="rere.row_order must be one of"):
        filtered(row_order="newest")


@pytest.mark.parametrize("sampling", ["sample", "dynamic"])
def test_sampled_groups_train_too(recommender, tiny_backbone, dataset, rows, tmp_path, sampling):
    # the groups: G catalogue items per prompt, repeats allowed (which items ``dynamic`` keeps:
    # test_dynamic_group_keeps_target_copies_and_fills_with_frequent_negatives)
    trainer = _trainer(recommender, tiny_backbone, dataset, tmp_path / "groups", sampling=sampling)
    _, completions = _first_groups(trainer, recommender, rows)
    targets = rows[1]
    titles = dict(zip(recommender.trie.sequences, recommender.titles, strict=True))
    groups = [
        [titles[tuple(c)] for c in completions[i : i + G]] for i in range(0, len(completions), G)
    ]
    assert [len(g) for g in groups] == [G, G, G]  # every completion is a catalogue item
    assert trainer._metrics["train"]["rere/target_in_group"][0] == pytest.approx(
        sum(t in g for g, t in zip(groups, targets[:3], strict=True)) / 3
    )

    model, history, _ = _train(
        recommender,
        tiny_backbone,
        dataset,
        rows,
        tmp_path / "train",
        # a colder draw, so that groups hold their target (the second beam) and the rewards
        # differ within them: the policy must then move
        {
            **PARAMS,
            "max_steps": 2,
            "sampling": sampling,
            "temperature": 0.5,
            "objective": "gspo",
            "keep_best": False,
        },
    )
    assert any(h.get("rere/target_in_group", 0) > 0 for h in history)
    before = tiny_backbone.model.state_dict()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_interrupted_rl_run_resumes_from_its_checkpoint(
    recommender, tiny_backbone, dataset, rows, tmp_path
):
    # beta 0: no KL reference (a resumed run rebuilds it from the model it is given), so the
    # gradients depend on the restored policy alone (GRPO's loss itself is ~0 here)
    params = {**PARAMS, "beta": 0.0}
    train = lambda folder, steps, **kw: _train(  # noqa: E731
        recommender, tiny_backbone, dataset, rows, folder, {**params, "max_steps": steps}, **kw
    )
    _, whole, whole_valid = train(tmp_path / "whole", 4)
    _, first, first_valid = train(tmp_path / "cut", 2)  # "killed" after its step-2 checkpoint
    checkpoint = tmp_path / "cut" / "checkpoint-2"
    # complete, as ``checkpoints.prepare`` requires it of the ``rere`` node's checkpoints
    for name in ("model.safetensors", TRAINER_STATE, *rere.ValidNDCGCallback.CHECKPOINT_FILES):
        assert (checkpoint / name).exists(), name
    # the resumed run is handed a model with other weights: all it may use is the checkpoint
    other = copy.deepcopy(tiny_backbone.model)
    with torch.no_grad():
        for weight in other.parameters():
            weight.mul_(0.5)
    _, second, valid = train(tmp_path / "cut", 4, resume=str(checkpoint), model=other)

    for key in ("grad_norm", "entropy"):
        cut, resumed, uncut = (
            {h["step"]: h[key] for h in r if key in h} for r in (first, second, whole)
        )
        assert {s: v for s, v in resumed.items() if s <= 2} == cut
        assert resumed == pytest.approx(uncut, rel=1e-4)  # steps 3-4 as in the uncut run
    # the valid scores before the cut are carried over, not re-scored on the checkpoint
    assert [h["step"] for h in valid] == [0, 2, 4] == [h["step"] for h in whole_valid]
    assert valid[:2] == [{k: v for k, v in h.items() if k != "kept"} for h in first_valid]
    assert [h["valid_ndcg_at_10"] for h in valid] == pytest.approx(
        [h["valid_ndcg_at_10"] for h in whole_valid], rel=1e-4
    )


class _ScriptedValid(rere.ValidNDCGCallback):
    """A valid callback whose per-row NDCG@10 at each scoring is given, not decoded."""

    def __init__(self, scores, collapse_ratio: float = 0.5):
        super().__init__([[1]], ["t"], None, [], every=1, collapse_ratio=collapse_ratio)
        self.scripted = iter(scores)

    def score(self, model):
        self.last_rows = np.asarray(next(self.scripted), float)
        return {"valid_ndcg_at_10": self.last_rows.mean(), "valid_hr_at_10": 0.0}


def _kept_step(scores, confidence):
    """Score a one-weight model at steps 0, 1, 2 (its weight = the step) against ``scores``;
    returns the step ``restore_best`` reports and the weight the model ends with."""
    model = torch.nn.Linear(1, 1, bias=False)
    callback = _ScriptedValid(scores)
    for step in range(len(scores)):
        with torch.no_grad():
            model.weight.fill_(step)
        callback._record(step, model)
    step = callback.restore_best(model, confidence)
    assert [h["step"] for h in callback.history if h.get("kept")] == [step]
    return step, int(model.weight.item())


def test_keep_best_undoes_a_collapse_but_not_a_near_tie():
    rng = np.random.default_rng(0)
    before, final = [(rng.random(1000) < share) * 0.5 for share in (0.10, 0.15)]  # 0.5 per hit

    def changed(rows, gained, lost):  # ``rows`` with some misses turned into hits and back
        out = rows.copy()
        out[rng.choice(np.flatnonzero(rows == 0), gained, replace=False)] = 0.5
        out[rng.choice(np.flatnonzero(rows > 0), lost, replace=False)] = 0.0
        return out

    near = changed(final, gained=12, lost=6)  # 6 hits more of ~150: differs on 18 rows only
    collapsed = changed(final, gained=0, lost=75)
    # the sample ranks step 1 first by a few rows: noise, so the final weights stay
    assert _kept_step([before, near, final], confidence=0.95) == (2, 2)
    # ... unless no confidence is asked for: then the best scoring step always wins
    assert _kept_step([before, near, final], confidence=0.0) == (1, 1)
    # a collapse at the final step is undone: the weights go back to the best step
    assert _kept_step([before, final, collapsed], confidence=0.95) == (1, 1)
    # the final step being the best needs no comparison
    assert _kept_step([before, collapsed, final], confidence=0.95) == (2, 2)


def test_keep_best_asks_more_of_a_best_picked_from_more_steps():
    rng = np.random.default_rng(0)
    before, final = [(rng.random(1000) < share) * 0.5 for share in (0.10, 0.15)]
    best = final.copy()  # 24 hits more, 10 fewer: best / final 1.079, 95% 1.010 - 1.153
    best[rng.choice(np.flatnonzero(final == 0), 24, replace=False)] = 0.5
    best[rng.choice(np.flatnonzero(final > 0), 10, replace=False)] = 0.0
    # the only earlier step: held to 95%, which it passes
    assert _kept_step([best, final], confidence=0.95) == (0, 0)
    # the same rows as the best of 5 earlier steps: held to 99% (0.995 - 1.174), which it fails
    assert _kept_step([before] * 4 + [best, final], confidence=0.95) == (5, 5)


@pytest.mark.parametrize("ratio, stops_at", [(0.5, 3), (0.0, None)])
def test_training_stops_when_valid_ndcg_collapses(ratio, stops_at):
    from transformers import TrainerControl, TrainerState

    # before RL 0.4; then 0.3 and 0.21 (above half of it), then 0.19 (below)
    callback = _ScriptedValid([[0.4] * 5, [0.3] * 5, [0.21] * 5, [0.19] * 5], ratio)
    model, state, control = torch.nn.Linear(1, 1), TrainerState(), TrainerControl()
    callback._record(0, model)
    stopped = None
    for step in (1, 2, 3):
        state.global_step = step
        callback.on_step_end(None, state, control, model=model)
        if control.should_training_stop and stopped is None:
            stopped = step
    assert stopped == stops_at
    assert [h["step"] for h in callback.history] == [0, 1, 2, 3]


def test_objectives_and_reference_sync_reach_trls_config(tmp_path):
    # the paper's design space: GRPO, DAPO's token-level loss, GSPO's sequence-level ratio
    for objective, expected in {
        "grpo": ("grpo", "token"),
        "dapo": ("dapo", "token"),
        "gspo": ("grpo", "sequence"),
    }.items():
        args = _config(tmp_path, objective=objective)
        assert (args.loss_type, args.importance_sampling_level) == expected, objective
    assert not _config(tmp_path).sync_ref_model
    synced = _config(tmp_path, sync_ref_model={"enabled": True, "steps": 25, "alpha": 0.6})
    assert (synced.sync_ref_model, synced.ref_model_sync_steps) == (True, 25)
    assert synced.ref_model_mixup_alpha == 0.6
    args = _config(tmp_path)
    assert (args.num_generations, args.per_device_train_batch_size, args.beta) == (G, 2 * G, 1e-3)
    with pytest.raises(ValueError, match="objective"):
        _config(tmp_path, objective="ppo")


def test_gspo_has_grpos_gradient_on_policy_and_its_own_from_the_second_pass(
    recommender, tiny_backbone, dataset, tmp_path
):
    def trained(objective, passes):
        # one step on the first groups; with two passes a second step on the same groups
        trainer = _trainer(
            recommender,
            tiny_backbone,
            dataset,
            tmp_path / f"{objective}{passes}",
            objective=objective,
            num_iterations=passes,
            max_steps=passes,
            eval_steps=100,
        )
        trainer.train()
        return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])

    start = torch.cat([p.detach().flatten() for p in tiny_backbone.model.parameters()])
    for passes in (1, 2):
        grpo, gspo = trained("grpo", passes), trained("gspo", passes)
        moved, apart = float((grpo - start).norm()), float((gspo - grpo).norm())
        assert moved > 0
        if passes == 1:  # every importance ratio is 1: the same update up to float error
            assert apart < 1e-4 * moved, (passes, apart, moved)
        else:  # the second step reuses the first step's groups: the ratios differ from 1
            assert apart > 1e-2 * moved, (passes, apart, moved)
    with pytest.raises(ValueError, match="num_iterations must be at least 1"):
        _config(tmp_path, num_iterations=0)
    # the informative-row search looks for the prompts the run consumes: each batch serves
    # num_iterations steps
    budget = {"prompts_per_step": 8, "gradient_accumulation_steps": 2, "max_steps": 101}
    assert rows_needed(budget) == 101 * 16
    assert rows_needed({**budget, "num_iterations": 2}) == 51 * 16
    assert rows_needed({**budget, "max_steps": -1}) is None


def test_beams_are_scored_at_temperature_one(tmp_path):
    assert _config(tmp_path, temperature=0.7).temperature == 1.0  # beams are decoded at 1
    assert _config(tmp_path, temperature=0.7, sampling="sample").temperature == 0.7
    assert (_config(tmp_path).epsilon, _config(tmp_path).epsilon_high) == (
        0.2,
        None,
    )  # TRL: high = low when None
    gspo = _config(tmp_path, objective="gspo", epsilon=3e-4, epsilon_high=4e-4)
    assert (gspo.epsilon, gspo.epsilon_high) == (3e-4, 4e-4)


def test_dapo_with_reference_sync_trains_and_moves_the_reference(
    recommender, tiny_backbone, dataset, tmp_path
):
    trainer = _trainer(
        recommender,
        tiny_backbone,
        dataset,
        tmp_path,
        objective="dapo",
        max_steps=2,
        sync_ref_model={"enabled": True, "steps": 1, "alpha": 1.0},
    )
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    policy, reference = trainer.model.state_dict(), trainer.ref_model.state_dict()
    assert any(not torch.equal(start[k], v) for k, v in policy.items())  # the policy moved
    # alpha 1, every step: the reference is the policy after each step
    assert all(torch.equal(reference[k], v) for k, v in policy.items())


def test_plain_lm_head_gives_trls_log_probabilities(recommender, tiny_backbone, dataset, tmp_path):
    trainer = _trainer(
        recommender, tiny_backbone, dataset, tmp_path, loss_head="fused", temperature=0.7
    )
    torch.manual_seed(0)
    ids = torch.randint(0, 600, (6, 30))
    mask = torch.ones_like(ids)
    mask[:2, :5] = 0  # left padding
    fused = trainer._get_per_token_logps_and_entropies(
        trainer.model, ids, mask, 12, batch_size=4, compute_entropy=True
    )
    trainer.plain_head = True
    plain = trainer._get_per_token_logps_and_entropies(
        trainer.model, ids, mask, 12, batch_size=4, compute_entropy=True
    )
    assert plain[0].shape == (6, 12)
    torch.testing.assert_close(plain[0], fused[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(plain[1], fused[1], rtol=1e-4, atol=1e-4)


def test_shared_prompts_give_the_whole_rows_values_and_gradients(tiny_backbone):
    # Three prompts (one left-padded), each with several completions (some right-padded), the
    # rows shuffled as TRL hands them over: running each prompt once must change nothing.
    torch.manual_seed(0)
    prompts, prompt_mask = torch.randint(0, 600, (3, 18)), torch.ones(3, 18, dtype=torch.long)
    prompt_mask[1, :4] = 0
    rows = [2, 0, 1, 0, 2, 1, 1, 0]
    completions, completion_mask = torch.randint(0, 600, (8, 7)), torch.ones(8, 7, dtype=torch.long)
    completion_mask[[1, 4], 5:] = 0
    ids = torch.cat([prompts[rows], completions], dim=1)
    mask = torch.cat([prompt_mask[rows], completion_mask], dim=1)
    weights = torch.randn(8, 7, tiny_backbone.model.config.hidden_size)

    def hidden_and_grads(hidden_of):
        model = copy.deepcopy(tiny_backbone.model).train()
        hidden = hidden_of(model.get_decoder())
        (hidden * weights).sum().backward()
        return hidden.detach(), {
            n: p.grad for n, p in model.named_parameters() if p.grad is not None
        }

    shared, shared_grads = hidden_and_grads(lambda d: rere.completion_hidden(d, ids, mask, 7))
    whole, whole_grads = hidden_and_grads(
        lambda d: d(input_ids=ids, attention_mask=mask).last_hidden_state[:, -8:-1]
    )
    torch.testing.assert_close(shared, whole, rtol=1e-5, atol=1e-5)
    assert shared_grads.keys() == whole_grads.keys() and len(whole_grads) > 5
    for name, grad in whole_grads.items():
        scale = float(grad.abs().max())  # summed in another order: float error, relative
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_rl_rows_refuse_prompts_of_other_train_rows():
    train = pd.DataFrame({"user_id": ["u", "v", "w"], "item_id": [1, 2, 3]})
    for prompts in (train.iloc[:2], train.iloc[::-1]):  # fewer rows; the same rows reordered
        with pytest.raises(ValueError, match="not aligned: rebuild the prompts"):
            rl_rows(prompts, train, {})
