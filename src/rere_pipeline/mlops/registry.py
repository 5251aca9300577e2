"""The MLflow model registry: register a challenger, promote it to champion only if it is better.

Every registered version of ``rere-recommender`` carries the evidence promotion needs as
tags: ``valid_ndcg_at_10`` and ``valid_rows`` (a fingerprint of what it was scored on: the valid
rows and their prompts, the catalogue and the decoding) and ``trained_before`` (Unix seconds:
every row it trained on has an earlier target). ``promote`` compares challenger and champion
**on the same rows**, rows neither trained on, using, in order:

* the comparison recorded when the challenger was trained, if it is against this very
  champion (a retrain cycle scores both on its new valid window: ``compared_with_*`` tags);
* the champion's own ``valid_ndcg_at_10``, if both were scored on the same rows;
* else the caller's ``rescore``, told the newest ``trained_before`` of the two, on rows from
  then on (a retrain model trained on the release's valid period: those rows cannot judge it).

The alias ``champion`` moves only when the challenger beats the champion by more than
``margin``; the decision and its reason are written to the challenger's tags (``promotion.*``)
either way, and nothing else about the champion is ever touched.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
# Tags of a version that a retrain cycle scored against the champion it warm-started from,
# on the same new valid rows.
COMPARED_WITH, COMPARED_SCORE = "compared_with_version", "compared_with_valid_ndcg_at_10"
TRAINED_BEFORE = "trained_before"


def rows_fingerprint(
    rows: pd.DataFrame, catalogue_titles, beam_width: int, length_penalty: float
) -> str:
    """Identifies what a valid score was measured on: every row (user, target item and title,
    and the prompt text the model read, in order), the catalogue titles the beams could reach,
    the beam width and the length penalty. Two scores with the same fingerprint are
    comparable; a changed history window, prompt template or catalogue changes it."""
    digest = hashlib.sha256()
    for row in (
        rows[["user_id", "item_id", "item_title", "prompt"]].astype(str).itertuples(index=False)
    ):
        digest.update(("\x1f".join(row) + "\n").encode())
    for title in sorted(set(map(str, catalogue_titles))):
        digest.update(f"{title}\n".encode())
    digest.update(f"beam={int(beam_width)}\nlength_penalty={float(length_penalty)!r}".encode())
    return digest.hexdigest()[:16]


# What the registry answers for a model that does not exist, and for an alias no version holds.
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def version_by_alias(client: mlflow.MlflowClient, name: str, alias: str):
    """The model version holding ``alias``, or None (no such model or alias). Any other
    failure (the store unreachable, an interrupted query) is raised: taken for "no champion",
    it would promote a challenger without comparing it."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND and exc.__cause__ is None:
            return None
        raise


def tag_version(name: str, version: str, tags: dict[str, str]) -> None:
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def set_challenger(name: str, version: str, tags: dict[str, str] | None = None) -> None:
    """Tag ``version`` (``tags``), then make it the challenger."""
    tag_version(name, version, tags or {})
    mlflow.MlflowClient().set_registered_model_alias(name, CHALLENGER, version)
    log.info("%s version %s is the challenger (%s)", name, version, tags)


@dataclass
class Decision:
    promoted: bool
    reason: str
    challenger_version: str
    challenger_score: float | None
    champion_version: str | None
    champion_score: float | None
    margin: float


def decide(challenger: float, champion: float | None, margin: float) -> tuple[bool, str]:
    """Promote only a strictly better challenger: ``challenger > champion + margin``."""
    if champion is None:
        return True, f"no champion yet; challenger valid NDCG@10 {challenger:.4f}"
    if challenger > champion + margin:
        return True, (
            f"challenger valid NDCG@10 {challenger:.4f} beats the champion's {champion:.4f} "
            f"by more than the margin {margin:g}"
        )
    return False, (
        f"challenger valid NDCG@10 {challenger:.4f} does not beat the champion's {champion:.4f} "
        f"by more than the margin {margin:g}; the champion stays"
    )


def promote(
    name: str,
    margin: float = 0.0,
    rescore: Callable[[list[str], int | None], list[float]] | None = None,
    expected_challenger: str | None = None,
) -> Decision:
    """Move ``champion`` to the ``challenger`` version if it is better on the same valid rows.

    The two scores come from the first source the module docstring lists that applies; the last,
    ``rescore(model_uris, newer_than) -> valid NDCG@10 each``, scores both on rows common to
    them whose target is from ``newer_than`` (Unix seconds; None: unknown, any row) on.

    ``expected_challenger``: the version the caller registered; when the alias holds another
    (a concurrent ``register``), nothing is promoted and ``RuntimeError`` is raised.
    """
    client = mlflow.MlflowClient()
    challenger = version_by_alias(client, name, CHALLENGER)
    if challenger is None:
        raise ValueError(
            f"registered model {name!r} has no {CHALLENGER!r} alias: register one first"
        )
    if expected_challenger is not None and str(challenger.version) != str(expected_challenger):
        raise RuntimeError(
            f"the {CHALLENGER!r} alias of {name!r} moved to v{challenger.version} (expected "
            f"v{expected_challenger}, e.g. another register ran meanwhile): nothing promoted"
        )
    champion = version_by_alias(client, name, CHAMPION)
    if champion is not None and str(champion.version) == str(challenger.version):
        decision = Decision(
            False,
            f"version {challenger.version} already is the champion",
            str(challenger.version),
            None,
            str(champion.version),
            None,
            margin,
        )
        log.info(decision.reason)
        return decision
    score, best = _scores(name, challenger, champion, rescore)
    # rescoring takes minutes: a champion another promote moved meanwhile was not compared
    now = version_by_alias(client, name, CHAMPION)
    if _version(now) != _version(champion):
        raise RuntimeError(
            f"the {CHAMPION!r} alias of {name!r} moved from {_version(champion)} to "
            f"{_version(now)} while v{challenger.version} was compared (another promote ran "
            "meanwhile): nothing promoted; run promote again to compare with the new champion"
        )
    promoted, reason = decide(score, best, margin)
    decision = Decision(
        promoted,
        reason,
        str(challenger.version),
        score,
        str(champion.version) if champion is not None else None,
        best,
        margin,
    )
    _record(client, name, decision)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
    log.info(
        "%s v%s %s: %s", name, challenger.version, "promoted" if promoted else "kept out", reason
    )
    return decision


def _scores(name: str, challenger, champion, rescore) -> tuple[float, float | None]:
    """Valid NDCG@10 of challenger and champion (None: no champion) on the same rows, from the
    first source that applies (module docstring); a score tag is read only where it is used."""
    if champion is None:
        return _recorded_score(challenger), None
    if challenger.tags.get(COMPARED_WITH) == str(champion.version):
        score, best = _recorded_score(challenger), float(challenger.tags[COMPARED_SCORE])
        log.info(
            "challenger v%s was scored against champion v%s on its own valid rows when it was "
            "trained: %.4f vs %.4f",
            challenger.version,
            champion.version,
            score,
            best,
        )
        return score, best
    rows = challenger.tags.get("valid_rows")
    if rows and rows == champion.tags.get("valid_rows"):  # two versions without one differ
        return _recorded_score(challenger), _recorded_score(champion)
    if rescore is None:
        raise ValueError(
            f"challenger v{challenger.version} and champion v{champion.version} were scored on "
            "different valid rows and no rescoring function was given"
        )
    known = [v.tags.get(TRAINED_BEFORE) for v in (challenger, champion)]
    newer_than = max((int(t) for t in known if t), default=None)
    log.info("challenger and champion were scored on different rows: scoring both again")
    score, best = rescore(
        [f"models:/{name}/{challenger.version}", f"models:/{name}/{champion.version}"],
        newer_than,
    )
    return score, best


def _version(version) -> str:
    return "no champion" if version is None else f"v{version.version}"


def _recorded_score(version) -> float:
    try:
        return float(version.tags["valid_ndcg_at_10"])
    except (KeyError, ValueError) as exc:
        raise ValueError(
            f"model version {version.version} has no numeric 'valid_ndcg_at_10' tag"
        ) from exc


def _record(client: mlflow.MlflowClient, name: str, decision: Decision) -> None:
    tags = {
        "promotion.decision": "promoted" if decision.promoted else "rejected",
        "promotion.reason": decision.reason,
        "promotion.at": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "promotion.margin": f"{decision.margin:g}",
        "promotion.challenger_valid_ndcg_at_10": f"{decision.challenger_score:.6f}",
    }
    if decision.champion_version is not None:
        tags["promotion.champion_version"] = decision.champion_version
        tags["promotion.champion_valid_ndcg_at_10"] = f"{decision.champion_score:.6f}"
    for key, value in tags.items():
        client.set_model_version_tag(name, decision.challenger_version, key, value)


def decision_report(decision: Decision) -> dict:
    return asdict(decision)
