"""Nodes of the ``rere`` pipeline: RL fine-tuning of the SFT model with constrained-beam groups."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd
from datasets import Dataset
from matplotlib.figure import Figure

from rere_pipeline.pipelines import checkpoints, samples
from rere_pipeline.recsys import rere, rewards
from rere_pipeline.recsys.backbone import Backbone
from rere_pipeline.recsys.prompts import PromptTemplate
from rere_pipeline.recsys.recommend import CatalogueRecommender

log = logging.getLogger(__name__)

PLOTTED = (
    ("reward", "mean reward (weighted sum)"),
    ("reward_std", "reward std"),
    ("kl", "KL to the reference"),
    ("rere/target_in_group", "share of groups holding the target"),
    ("rere/distinct_items", "distinct items per group"),
    ("valid_ndcg_at_10", "valid NDCG@10"),
)


ROW_ORDERS = ("random", "recent")
# rere.<key> -> its options, the default first
CHOICES = {
    "init": ("sft", "base"),
    "row_order": ROW_ORDERS,
    "sampling": rere.SAMPLING,
    "objective": tuple(rere.OBJECTIVES),
}


def check_params(params: dict) -> None:
    """Refuse an unknown choice (``CHOICES``), reward, ``keep_best_confidence`` outside
    [0, 1) or ``num_iterations`` below 1 before anything is decoded or trained: the ablation
    checks every arm before it trains the first."""
    for key, options in CHOICES.items():
        rere.check_choice(key, params.get(key, options[0]), options)
    rewards.check_weights(reward_weights(params))
    rere.keep_best_confidence(params)
    rere.num_iterations(params)


def reward_weights(params: dict) -> dict[str, float]:
    """``rere.rewards`` without the rewards weighted 0."""
    return {k: float(v) for k, v in (params.get("rewards") or {}).items() if v}


def _budget_order(rows: pd.DataFrame, params: dict) -> pd.DataFrame:
    """``rows`` in the order the RL budget takes them (``rere.row_order``): ``random``, a
    permutation seeded with ``rere.seed``, or ``recent``, newest target first."""
    if params.get("row_order", "random") == "recent":
        return rows.sort_values("timestamp", ascending=False, kind="stable")
    return rows.sample(frac=1.0, random_state=int(params.get("seed", 0)))


def rl_rows(prompts_train: pd.DataFrame, train: pd.DataFrame, params: dict) -> pd.DataFrame:
    """Prompt (text and ids), target title, history ids and timestamp of the train rows
    (the first ``train_rows`` of them in ``_budget_order`` when set: the CPU budget)."""
    if not (
        len(prompts_train) == len(train)
        and (prompts_train["user_id"].values == train["user_id"].values).all()
        and (prompts_train["item_id"].values == train["item_id"].values).all()
    ):
        raise ValueError(
            f"prompts_train ({len(prompts_train)} rows) and train ({len(train)} rows) are not "
            "aligned: rebuild the prompts (kedro run --pipelines=prompts)"
        )
    rows = pd.DataFrame(
        {
            "prompt": prompts_train["prompt"].values,
            "prompt_ids": [list(map(int, p)) for p in prompts_train["prompt_ids"]],
            "item_title": prompts_train["item_title"].astype(str).values,
            "history_item_id": [list(map(int, h)) for h in train["history_item_id"]],
            "timestamp": train["timestamp"].values,
        }
    )
    limit = params.get("train_rows")
    return _budget_order(rows, params).head(int(limit)) if limit else rows


def rows_needed(params: dict) -> int | None:
    """Prompts the RL run consumes (``max_steps`` x prompts per optimiser step, each batch used
    for ``num_iterations`` steps); ``None`` when ``max_steps`` is not set (the run goes by
    epochs over every row)."""
    steps = int(params.get("max_steps", -1))
    per_step = int(params["prompts_per_step"]) * int(params.get("gradient_accumulation_steps", 1))
    return -(-steps // rere.num_iterations(params)) * per_step if steps > 0 else None


def informative_rows(
    rows: pd.DataFrame, model, recommender: CatalogueRecommender, params: dict
) -> pd.DataFrame:
    """The rows whose target is among the starting policy's G beams (``informative_only``).

    Under rule + ranking a group without its target has zero reward spread, hence zero GRPO
    advantage: its step moves nothing but the KL. Dropping those rows up front (DAPO's
    dynamic sampling, filtered once) spends every RL step on groups that teach. Rows are
    decoded in ``_budget_order`` (seeded, or newest first: the rows nearest the evaluation
    period) until ``max_steps`` steps' worth are found (all rows when ``max_steps`` is not set).
    """
    rows = _budget_order(rows, params)
    keep = rere.rows_with_target_in_group(
        model,
        rows["prompt_ids"].tolist(),
        rows["item_title"].tolist(),
        recommender.trie,
        recommender.titles,
        int(params["num_generations"]),
        needed=rows_needed(params),
        batch_size=int(params.get("decode_batch_size", 32)),
        pad_token_id=recommender.tokenizer.pad_token_id,
        progress=bool(params.get("progress", True)),
    )
    if not keep:
        raise ValueError(
            "rere.informative_only: no train row has its target among the starting model's "
            f"{params['num_generations']} beams; train the SFT model longer or turn it off"
        )
    return rows.iloc[keep]


# The parameters that decide which rows ReRe trains on (with the starting model and
# ``rows_needed``).
ROW_PARAMS = ("init", "train_rows", "row_order", "seed", "informative_only", "num_generations")


def training_rows(
    prompts_train: pd.DataFrame,
    train: pd.DataFrame,
    model,
    recommender: CatalogueRecommender,
    params: dict,
    cache: dict | None = None,
) -> pd.DataFrame:
    """The rows ReRe trains on: ``rl_rows``, then ``informative_rows`` when asked for.

    With a ``cache`` (one per starting model: the ablation's arms and the tuning trials share
    theirs), runs whose ``ROW_PARAMS`` and ``rows_needed`` agree reuse the rows instead of
    decoding them again.
    """
    rere.check_choice("row_order", params.get("row_order", "random"), ROW_ORDERS)
    key = (*(params.get(name) for name in ROW_PARAMS), rows_needed(params))
    if cache is not None and key in cache:
        return cache[key]
    rows = rl_rows(prompts_train, train, params)
    if params.get("informative_only", False):
        rows = informative_rows(rows, model, recommender, params)
    if cache is not None:
        cache[key] = rows
    return rows


def reinforce(
    sft_model: Backbone,
    backbone: Backbone,
    catalogue: pd.DataFrame,
    prompts_train: pd.DataFrame,
    train: pd.DataFrame,
    prompts_valid: pd.DataFrame,
    sasrec_model,
    params: dict,
    prompt_params: dict,
    on_score=None,
    rows_cache: dict | None = None,
) -> tuple[Backbone, dict, Figure]:
    """ReRe on the train rows, starting from the SFT model (``init: sft``) or the backbone.

    ``on_score(step, metrics, last)`` sees every periodic valid score (tuning prunes with it);
    ``rows_cache`` lets callers that train several runs from the same models share the row
    filter (see ``training_rows``)."""
    check_params(params)
    init = {"sft": sft_model, "base": backbone}[params.get("init", "sft")]
    size = int(params["num_generations"])
    recommender = CatalogueRecommender(
        init.tokenizer, init.model, catalogue, PromptTemplate.from_params(prompt_params)
    )
    index = rewards.CatalogueIndex.of(recommender)
    weights = reward_weights(params)
    funcs, func_weights = rewards.build_rewards(
        weights, index, size, sasrec=sasrec_model if "collaborative" in weights else None
    )
    valid = samples.selection_sample(prompts_valid, params["valid_rows"])
    output_dir = Path(params["output_dir"])
    resume = checkpoints.prepare(
        output_dir,
        checkpoints.fingerprint(params, prompts_train, init.model),
        resume=bool(params.get("resume", True)),
        required=rere.ValidNDCGCallback.CHECKPOINT_FILES,
    )
    log.info(
        "ReRe: %s groups of %d, rewards %s, beta %g, from the %s model",
        params.get("sampling", "beam"),
        size,
        weights,
        float(params["beta"]),
        params.get("init", "sft"),
    )
    rows = training_rows(prompts_train, train, init.model, recommender, params, rows_cache)
    dataset = Dataset.from_pandas(
        rows.drop(columns=["prompt_ids", "timestamp"]).reset_index(drop=True)
    )
    model, history, valid_history = rere.train_rere(
        init.model,
        init.tokenizer,
        dataset,
        funcs,
        func_weights,
        recommender.trie,
        recommender.titles,
        [list(p) for p in valid["prompt_ids"]],
        valid["item_title"].astype(str).tolist(),
        params,
        str(output_dir),
        resume_from_checkpoint=resume,
        on_score=on_score,
    )
    shutil.rmtree(output_dir)  # finished: the model itself is the output
    metrics = checkpoints.log_history_series(history)
    metrics["valid_ndcg_at_10"] = [
        {"value": h["valid_ndcg_at_10"], "step": h["step"]} for h in valid_history
    ]
    metrics["rere/train_rows"] = [{"value": float(len(rows)), "step": 0}]  # after the filter
    kept = [h["step"] for h in valid_history if h.get("kept")] or [valid_history[-1]["step"]]
    metrics["rere/kept_step"] = [{"value": float(kept[0]), "step": 0}]  # keep_best's choice
    return Backbone(init.tokenizer, model), metrics, training_figure(metrics)


def training_figure(metrics: dict) -> Figure:
    """The RL run at a glance: rewards per function, reward spread, KL, group statistics and
    valid NDCG@10, against the step."""
    figure = Figure(figsize=(13, 7), layout="constrained")
    axes = figure.subplots(2, 4).ravel()
    panels = [("rewards/", "mean reward per function")] + list(PLOTTED)
    for ax, (key, title) in zip(axes, panels, strict=False):
        names = (
            [k for k in metrics if k.startswith(key) and k.endswith("/mean")]
            if key == "rewards/"
            else [key]
        )
        for name in names:
            points = metrics.get(name, [])
            if points:
                ax.plot(
                    [p["step"] for p in points],
                    [p["value"] for p in points],
                    marker="o" if len(points) < 20 else None,
                    label=name.removeprefix("rewards/").removesuffix("/mean"),
                )
        if key == "rewards/" and names:
            ax.legend()
        if key == "valid_ndcg_at_10" and metrics.get("rere/kept_step"):  # keep_best's choice
            kept = metrics["rere/kept_step"][0]["value"]
            ax.axvline(kept, color="grey", ls="--")
            ax.annotate("kept", (kept, 0.02), xycoords=("data", "axes fraction"))
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    figure.suptitle("ReRe reinforcement fine-tuning")
    return figure
