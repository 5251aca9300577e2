"""Nodes of the ``ablation`` pipeline: the paper's design choices, one arm each, same budget.

Every arm starts from the same SFT model and trains on the same rows with the same RL budget
(``parameters_rere.yml`` with the arm's overrides), once per seed; each result is scored on
the official test split. The SFT arm is deterministic and is scored once.

An ablation takes hours, so each finished (arm, seed) row is kept in ``ablation.progress_dir``
until the table is saved (``clear_progress``, the node after): a run stopped midway and
started again with the same inputs and parameters reuses those rows, and the arm that was
training resumes from its checkpoints. The stamp covers inputs and parameters, not code: after
changing the code, run with ``ablation.resume: false``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import statistics
from pathlib import Path

import pandas as pd

from rere_pipeline.atomic import replace_file
from rere_pipeline.pipelines.evaluate.nodes import evaluate_lm
from rere_pipeline.pipelines.rere.nodes import check_params, reinforce
from rere_pipeline.recsys.backbone import Backbone, weights_digest

log = logging.getLogger(__name__)


def run_ablation(
    sft_model: Backbone,
    backbone: Backbone,
    catalogue: pd.DataFrame,
    prompts_train: pd.DataFrame,
    train: pd.DataFrame,
    prompts_valid: pd.DataFrame,
    sasrec_model,
    prompts_test: pd.DataFrame,
    rere_params: dict,
    params: dict,
    evaluate_params: dict,
    prompt_params: dict,
) -> tuple[pd.DataFrame, str]:
    """One row per (arm, seed) with its test HR@K / NDCG@K, and the markdown summary."""
    evaluate_params = {**evaluate_params, "max_rows": params.get("test_rows")}
    runs = arm_runs(rere_params, params)
    for _, _, arm_params in runs:  # a mistyped arm fails now, not after the arms before it
        if arm_params is not None:
            check_params(arm_params)
    progress = Progress(
        progress_folder(params),
        inputs_digest(
            [sft_model, backbone, sasrec_model],
            [catalogue, prompts_train, train, prompts_valid, prompts_test],
            {"evaluate": evaluate_params, "prompts": prompt_params},
        ),
        resume=bool(params.get("resume", True)),
    )
    rows, rows_cache = [], {}  # every arm of a seed trains on the same (filtered) rows
    for arm, seed, arm_params in runs:
        done = progress.row(arm, seed, arm_params)
        if done is not None:
            rows.append(done)
            continue
        if arm_params is None:  # the SFT model itself
            model = sft_model
        else:
            log.info("ablation arm %s, seed %d", arm, seed)
            model, _, _ = reinforce(
                sft_model,
                backbone,
                catalogue,
                prompts_train,
                train,
                prompts_valid,
                sasrec_model,
                arm_params,
                prompt_params,
                rows_cache=rows_cache,
            )
        report, _ = evaluate_lm(
            arm, model, catalogue, evaluate_params, prompt_params, test=prompts_test
        )
        rows.append({"arm": arm, "seed": seed, **report[arm]["test"]})
        progress.keep(arm, seed, arm_params, rows[-1])
    results = pd.DataFrame(rows)
    return results, ablation_table(results, [int(k) for k in evaluate_params["ks"]])


def clear_progress(results: pd.DataFrame, table: str, params: dict) -> None:
    """Once the table is saved (its inputs are the saved outputs): remove the kept rows, so
    that the next ablation trains every arm again."""
    shutil.rmtree(progress_folder(params), ignore_errors=True)


def progress_folder(params: dict) -> Path:
    return Path(params["progress_dir"]) / params["arm_set"]


def inputs_digest(models: list, frames: list[pd.DataFrame], params: dict) -> str:
    """SHA-256 of the models' weights, the frames' contents and the parameters: a row kept by
    an earlier run is reused only when all of them are what it was computed from."""
    digest = hashlib.sha256()
    for model in models:
        module = getattr(model, "model", model)  # a Backbone's LM, or SASRec itself
        digest.update((weights_digest(module) if module is not None else "none").encode())
    for frame in frames:
        buffer = io.BytesIO()
        frame.to_parquet(buffer)  # list cells (token ids, histories) included
        digest.update(hashlib.sha256(buffer.getvalue()).digest())
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class Progress:
    """The finished (arm, seed) rows of an unfinished ablation, one JSON file each, stamped
    with the inputs' digest and the arm's parameters."""

    def __init__(self, folder: Path, digest: str, resume: bool = True):
        self.folder, self.digest = folder, digest
        if not resume:
            shutil.rmtree(folder, ignore_errors=True)

    def _stamp(self, params: dict | None) -> str:
        return hashlib.sha256(
            json.dumps([self.digest, params], sort_keys=True, default=str).encode()
        ).hexdigest()

    def _file(self, arm: str, seed: int) -> Path:
        return self.folder / f"{arm}_{seed}.json"

    def row(self, arm: str, seed: int, params: dict | None) -> dict | None:
        """The row an earlier run of these very inputs and parameters finished, if any."""
        path = self._file(arm, seed)
        if not path.is_file():
            return None
        try:
            kept = json.loads(path.read_text())
        except ValueError:  # cut short while written
            kept = {}
        if kept.get("stamp") != self._stamp(params):
            log.info("ablation: %s was computed from other inputs or parameters: run again", path)
            return None
        log.info("ablation arm %s, seed %d: finished by an earlier run (%s)", arm, seed, path)
        return kept["row"]

    def keep(self, arm: str, seed: int, params: dict | None, row: dict) -> None:
        text = json.dumps({"stamp": self._stamp(params), "row": row}, default=float)
        replace_file(self._file(arm, seed), lambda staging: staging.write_text(text))


def arm_runs(rere_params: dict, params: dict) -> list[tuple[str, int, dict | None]]:
    """(arm, seed, ReRe parameters) per run of the arm set ``arm_set``, in order: each arm's
    overrides on top of ``rere_params`` and the shared ``budget``, once per seed (the SFT arm,
    ``None``, once)."""
    sets = params["arm_sets"]
    if params["arm_set"] not in sets:
        raise ValueError(
            f"ablation.arm_set must be one of {sorted(sets)}, not {params['arm_set']!r}"
        )
    seeds = [int(s) for s in params["seeds"] or ()]
    if not seeds or len(set(seeds)) != len(seeds):
        # a repeated seed would show a spread of ~0 as if it were measured over seeds
        raise ValueError(f"ablation.seeds must be distinct seeds, at least one: {seeds}")
    return [
        (
            arm,
            seed,
            None
            if overrides is None
            else {
                **rere_params,
                **(params.get("budget") or {}),
                **overrides,
                "seed": seed,
                "output_dir": f"{rere_params['output_dir']}_{arm}_{seed}",
            },
        )
        for arm, overrides in sets[params["arm_set"]].items()
        for seed in (seeds if overrides is not None else seeds[:1])
    ]


def ablation_table(results: pd.DataFrame, ks: list[int]) -> str:
    """Mean ± standard deviation over seeds per arm (``n`` = seeds; the mean alone for one)."""
    metrics = [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks]
    lines = [
        "# Ablation (official test split)",
        "",
        f"Rows scored per arm: {int(results['rows'].iloc[0])}. Mean ± sample standard deviation over "
        "`n` seeds, the value alone when `n` is 1 (same data, budget and starting SFT model for every arm).",
        "",
        "| arm | n | " + " | ".join(metrics) + " |",
        "|---" * (len(metrics) + 2) + "|",
    ]
    for arm, group in results.groupby("arm", sort=False):
        cells = []
        for m in metrics:
            values = group[m].tolist()
            cell = f"{statistics.mean(values):.4f}"
            if len(values) > 1:  # one run has no spread to show
                cell += f" ± {statistics.stdev(values):.4f}"
            cells.append(cell)
        lines.append(f"| {arm} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
