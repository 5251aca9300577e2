"""New interaction logs -> the event store -> splits with the cutoffs moved forward.

The **event store** (``retrain.store_dir``) is the seed events (``base.parquet``, copied from
the ``data`` pipeline's ``events`` on first use) plus one parquet file per processed log
(``batches/``) and per catalogue addition (``items/``). ``ledger.json`` records every
processed file by content hash, so a file is never ingested twice, whatever its name.

Drop files into ``retrain.new_logs_dir``:

* event logs (CSV or parquet): ``user_id,item_id,timestamp[,rating]``;
* catalogue additions (a name starting with ``items``): ``item_id,title``.

Nothing here writes to the store until ``EventStore.commit``, which the retrain calls only
once its challenger is registered: a retrain that fails before leaves the store as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import filelock
import pandas as pd

from rere_pipeline import validation
from rere_pipeline.atomic import replace_file
from rere_pipeline.datasets import csv_record_lines
from rere_pipeline.interrupts import RunInterrupted
from rere_pipeline.recsys import sequences

log = logging.getLogger(__name__)

LOG_SUFFIXES = (".csv", ".csv.gz", ".parquet")
DAY = 86_400
# A new catalogue row may not give a known item_id another title (quarantined otherwise).
KNOWN_TITLE_RULE = "item_id.known_title"
# nor a title the champion's tokenizer would read as a control token (prompts.check_titles)
CONTROL_TOKEN_RULE = "title.control_token"


class RetrainLocked(RuntimeError):
    """Another retrain holds the lock."""


def retrain_lock(path: str | Path) -> filelock.FileLock:
    """A non-blocking inter-process lock: entering it raises ``RetrainLocked`` if held."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _Lock(str(path), timeout=0)


class _Lock(filelock.FileLock):
    def __enter__(self):
        try:
            return super().__enter__()
        except filelock.Timeout as exc:
            raise RetrainLocked(
                f"another retrain is running (lock {self.lock_file} is held); try again when it ends"
            ) from exc


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_CSV_ARGS = {"dtype": str, "keep_default_na": False}


def read_log(path: Path) -> pd.DataFrame:
    """A dropped file with every cell as text (validation checks the types), its source named."""
    try:
        if path.name.endswith(".parquet"):
            frame = pd.read_parquet(path).apply(_whole_floats_as_integers)
            # a null cell becomes "" as in a CSV (not NaN, which the text rules skip)
            frame = frame.astype(object).where(frame.notna(), "").astype(str)
            lines = None  # no lines to point at
        else:
            frame = pd.read_csv(path, **_CSV_ARGS)
            lines = csv_record_lines(path, frame, read_args=_CSV_ARGS)
    except RunInterrupted:
        raise
    except Exception as exc:  # pandas and pyarrow raise many types for a corrupt file
        raise validation.DataValidationError(
            f"{path}: file is unreadable (rule: readable_file): {type(exc).__name__}: {exc}"
        ) from exc
    frame.attrs["source"] = str(path)
    frame.attrs["lines"] = lines
    return frame


def _whole_floats_as_integers(column: pd.Series) -> pd.Series:
    """An integer column that a writer without pandas metadata (pyarrow, Spark, DuckDB) stored
    as float for its nulls: back to integers, so that ids read "12", not "12.0"."""
    if not pd.api.types.is_float_dtype(column):
        return column
    values = column.dropna()
    if len(values) and (values == values.round()).all():
        return column.astype("Int64")
    return column


def is_catalogue_file(path: Path) -> bool:
    return path.name.startswith("items")


@dataclass(frozen=True)
class NewFile:
    path: Path
    sha256: str


@dataclass
class Batch:
    """The validated content of the new files, not yet in the store."""

    files: list[dict] = field(default_factory=list)  # ledger entries
    events: dict[str, pd.DataFrame] = field(default_factory=dict)  # batch name -> events
    items: dict[str, pd.DataFrame] = field(default_factory=dict)  # batch name -> additions
    quarantine: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def new_events(self) -> int:
        return sum(len(e) for e in self.events.values())


class EventStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.ledger_path = self.root / "ledger.json"

    # ------------------------------------------------------------------ reading
    def ledger(self) -> list[dict]:
        if not self.ledger_path.exists():
            return []
        return json.loads(self.ledger_path.read_text())

    def ensure_base(self, seed_events: pd.DataFrame) -> None:
        """Start the store from the seed events (only if it has no base yet)."""
        base = self.root / "base.parquet"
        if not base.exists():
            self._write(base, seed_events)
            log.info("event store started at %s with %d seed events", self.root, len(seed_events))

    def events(
        self, extra: dict[str, pd.DataFrame] | None = None, stored: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """Every stored event (plus ``extra`` batches), deduplicated and ordered per user.
        ``stored``: what ``events()`` returned before, so the store is not read again (a stored
        event still comes first, before an equal one of ``extra``, and ties keep their order)."""
        if stored is None:
            frames = [pd.read_parquet(self.root / "base.parquet")]
            frames += [
                pd.read_parquet(p) for p in sorted((self.root / "batches").glob("*.parquet"))
            ]
            stored = _as_events(frames)
        return _as_events([stored, *(extra or {}).values()]) if extra else stored

    def catalogue(
        self, seed: pd.DataFrame, extra: dict[str, pd.DataFrame] | None = None
    ) -> pd.DataFrame:
        frames = [seed[["item_id", "title"]]]
        frames += [pd.read_parquet(p) for p in sorted((self.root / "items").glob("*.parquet"))]
        frames += list((extra or {}).values())
        return (
            pd.concat(frames, ignore_index=True).drop_duplicates("item_id").reset_index(drop=True)
        )

    def new_files(self, folder: str | Path, settle_seconds: float = 0) -> list[NewFile]:
        """Files in ``folder`` whose content has not been processed yet (catalogue first).

        A file changed less than ``settle_seconds`` ago may still be being written: it is left
        for the next run, and so is the whole drop while a catalogue file settles (the drop's
        events may name its items). A file dated further than that in the future (a clock
        skew) is taken, with a warning, rather than held for ever.
        """
        done = {entry["sha256"] for entry in self.ledger()}
        now = time.time()
        candidates = [
            p
            for p in Path(folder).glob("*")
            if p.is_file() and p.name.endswith(LOG_SUFFIXES) and not p.name.startswith(".")
        ]
        age = {p: now - p.stat().st_mtime for p in candidates}
        for p in candidates:
            if age[p] <= -settle_seconds and settle_seconds:
                log.warning("%s is dated %.0f s in the future: taken as settled", p, -age[p])
        settling = [p for p in candidates if abs(age[p]) < settle_seconds]
        if settling:
            held = "the whole drop" if any(map(is_catalogue_file, settling)) else "they"
            log.warning(
                "%s changed less than %s s ago (may still be being written): %s wait for the "
                "next run",
                [p.name for p in settling],
                settle_seconds,
                held,
            )
            if held == "the whole drop":
                return []
        found = [NewFile(p, sha256(p)) for p in candidates if p not in settling]
        fresh = [f for f in found if f.sha256 not in done]
        return sorted(fresh, key=lambda f: (not is_catalogue_file(f.path), f.path.name))

    # ------------------------------------------------------------------ writing
    def commit(self, batch: Batch) -> None:
        """Add the batch's events and items, then its ledger entries (the commit point)."""
        for sub, frames in (("batches", batch.events), ("items", batch.items)):
            for name, frame in frames.items():
                self._write(self.root / sub / f"{name}.parquet", frame)
        self._write_text(self.ledger_path, json.dumps(self.ledger() + batch.files, indent=2))
        log.info(
            "event store: committed %d file(s), %d new events", len(batch.files), batch.new_events
        )

    @staticmethod
    def _write(path: Path, frame: pd.DataFrame) -> None:
        replace_file(path, lambda staging: frame.to_parquet(staging, index=False))

    @staticmethod
    def _write_text(path: Path, text: str) -> None:
        replace_file(path, lambda staging: staging.write_text(text))


def validate_new_files(
    files: list[NewFile],
    catalogue: pd.DataFrame,
    limits: validation.Limits,
    quarantine_dir: str | Path,
    stored: pd.DataFrame | None = None,
    title_problems: Callable[[list[str]], dict] | None = None,
) -> Batch:
    """Validate every file with the project's Great Expectations suites.

    Bad rows go to the batch's quarantine with the rules they broke, written to
    ``quarantine_dir`` (one CSV per file) before anything can stop the cycle; a file that is
    fatal (missing column, too many bad rows, unreadable) then stops everything with that file
    named. A fatal event log is moved out of the drop into ``quarantine_dir/rejected/`` with
    its error beside it (``reject_files``): the next retrain goes on with the other files
    instead of failing on it again. A fatal catalogue file keeps the whole drop where it is,
    since the drop's events may name the items it adds. A catalogue row whose ``item_id`` is
    already known under another title is quarantined (rule ``item_id.known_title``): ids are
    never re-titled by a log drop. A catalogue row whose title ``title_problems`` (titles ->
    the problem ones) finds spelling a control token of the model's tokenizer is quarantined
    and makes its file fatal (rule ``title.control_token``): in the store, such a title would
    stop every later retrain, and left out, the items the drop's events name would be missing.

    An event already in ``stored`` (the store's events) or in an earlier file of the batch is
    not new: it is left out of the batch and counted as ``already_stored`` in the file's ledger
    entry, so a re-exported log does not count as something to learn from.
    """
    batch = Batch()
    known = catalogue[["item_id", "title"]]
    seen = set(_event_keys(stored)) if stored is not None else set()
    fatal: dict[NewFile, list[str]] = {}
    for new in files:
        path, digest = new.path, new.sha256
        try:
            raw = read_log(path)
        except validation.DataValidationError as exc:
            fatal[new] = [str(exc)]  # the other files are still checked, their bad rows kept
            continue
        name = batch_name(path, digest)
        if is_catalogue_file(path):
            outcome = validation.validate_catalogue(raw, limits)
            if not outcome.fatal:
                _quarantine_retitled(outcome, raw, known)
            if not outcome.fatal and title_problems is not None and len(outcome.clean):
                _refuse_control_titles(outcome, raw, title_problems)
            additions = outcome.clean
            if not outcome.fatal and len(additions):
                batch.items[name] = additions
                known = pd.concat([known, additions], ignore_index=True).drop_duplicates("item_id")
            kept = len(additions)
        else:
            outcome = validation.validate_event_log(raw, known, limits)
            kept = repeated = 0
            if not outcome.fatal and len(outcome.clean):
                events = sequences.events_from_log(outcome.clean)
                keys = _event_keys(events)
                fresh = [k not in seen for k in keys]
                seen.update(keys)
                events = events[fresh]
                repeated = len(keys) - len(events)
                if len(events):
                    batch.events[name] = events[["user_id", "item_id", "timestamp", "rating"]]
                kept = len(events)
        if outcome.fatal:
            fatal[new] = [finding["message"] for finding in outcome.fatal]
        if len(outcome.quarantine):
            batch.quarantine[name] = outcome.quarantine
        batch.files.append(
            {
                "file": path.name,
                "sha256": digest,
                "kind": "catalogue" if is_catalogue_file(path) else "events",
                "rows": int(len(raw)),
                "accepted": int(kept),
                "quarantined": int(len(outcome.quarantine)),
                **({} if is_catalogue_file(path) else {"already_stored": int(repeated)}),
                "processed_at": datetime.now(tz=UTC).isoformat(timespec="seconds"),
            }
        )
    save_quarantine(batch, Path(quarantine_dir))
    if fatal:
        messages = [m for found in fatal.values() for m in found]
        if any(is_catalogue_file(new.path) for new in fatal):
            # the drop's events may name the items it adds: all of it waits for the fix
            where = "Fix the catalogue file; the whole drop waits for it"
        else:
            where = reject_files(fatal, Path(quarantine_dir) / "rejected")
        raise validation.fatal_error(messages, where)
    return batch


def batch_name(path: Path, digest: str) -> str:
    """A processed file's name in the store and the quarantine: its stem and content hash."""
    return f"{path.name.split('.')[0]}-{digest[:8]}"


def reject_files(fatal: dict[NewFile, list[str]], folder: Path) -> str:
    """Move each fatal event log out of the drop into ``folder`` as ``<stem>-<hash>.<ext>`` (the
    same content lands on the same name), with its error messages in ``<name>.error.txt``;
    returns what happened, for the error message. A file that cannot be moved stays."""
    moved, stayed = [], []
    for new, messages in fatal.items():
        target = folder / f"{batch_name(new.path, new.sha256)}.{new.path.name.partition('.')[2]}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            target.with_name(f"{target.name}.error.txt").write_text("\n".join(messages) + "\n")
            shutil.move(new.path, target)
        except OSError as exc:
            log.error("%s is fatal but could not be moved to %s: %s", new.path, target, exc)
            stayed.append(new.path.name)
            continue
        log.error("%s is fatal: moved to %s", new.path, target)
        moved.append(new.path.name)
    parts = []
    if moved:
        parts.append(
            f"Moved {', '.join(moved)} to {folder} (errors in <file>.error.txt): drop a file in "
            "again once it, or data.validation, is fixed; the other files wait for the next retrain"
        )
    if stayed:
        parts.append(
            f"Could not move {', '.join(stayed)} out of the drop: remove it by hand, or every "
            "retrain stops on it"
        )
    return "; ".join(parts)


def _as_events(frames: list[pd.DataFrame]) -> pd.DataFrame:
    combined = pd.concat(frames, ignore_index=True)
    return sequences.events_from_log(combined[["user_id", "item_id", "timestamp", "rating"]])


def _event_keys(events: pd.DataFrame) -> list[tuple]:
    """Each event's ``sequences.EVENT_KEY`` as a tuple, in the types ``events_from_log`` gives."""
    keys = events[sequences.EVENT_KEY].astype(
        {"user_id": str, "timestamp": "int64", "item_id": "int64"}
    )
    return list(keys.itertuples(index=False, name=None))


def _quarantine_retitled(
    outcome: validation.FileValidation, raw: pd.DataFrame, known: pd.DataFrame
) -> None:
    """Move the clean catalogue rows that give a known ``item_id`` another title to the
    quarantine; drop those that repeat a known item exactly (nothing new in them)."""
    titles = dict(zip(known["item_id"].astype(int), known["title"].astype(str), strict=True))
    clean = outcome.clean
    old = clean["item_id"].map(titles)
    retitled = clean.index[old.notna() & (old != clean["title"])].tolist()
    _quarantine_clean_rows(
        outcome, raw, retitled, KNOWN_TITLE_RULE, "item_id", "give a known item_id another title"
    )
    outcome.clean = clean[old.isna()]


def _refuse_control_titles(
    outcome: validation.FileValidation,
    raw: pd.DataFrame,
    title_problems: Callable[[list[str]], dict],
) -> None:
    """Quarantine the clean catalogue rows whose title spells a control token of the tokenizer
    that will read it (``title_problems``), and make the file fatal: the drop's events may
    name those items, and without them they would be quarantined as unknown for good. The
    whole drop waits until the titles are fixed."""
    clean = outcome.clean
    titles = clean["title"].astype(str)
    spelt = title_problems(titles.tolist())
    bad = clean.index[titles.isin(list(spelt))].tolist()
    _quarantine_clean_rows(
        outcome, raw, bad, CONTROL_TOKEN_RULE, "title", "spell a control token of the tokenizer"
    )
    if bad:
        first = clean.loc[bad[0]]
        outcome.fatal.append(
            {
                "column": "title",
                "rule": CONTROL_TOKEN_RULE,
                "message": (
                    f"{outcome.source}: {len(bad)} title(s) spell special tokens of the "
                    f"champion's tokenizer, e.g. item {first['item_id']} {first['title']!r} "
                    f"spells {', '.join(spelt[str(first['title'])])} (rule {CONTROL_TOKEN_RULE}; "
                    "the rows are in the quarantine file)"
                ),
            }
        )
    outcome.clean = clean.drop(index=bad)


def _quarantine_clean_rows(
    outcome: validation.FileValidation,
    raw: pd.DataFrame,
    rows: list[int],
    rule_name: str,
    column: str,
    broken: str,
) -> None:
    """Add ``rows`` (positions in ``raw``, rows the suites passed) to the file's quarantine
    under one more rule; the caller takes them out of ``outcome.clean``."""
    if not rows:
        return
    rule = validation.Rule(rule_name, column, lambda: None)
    moved = validation.quarantine_rows(
        raw.reset_index(drop=True), rows, {i: [rule] for i in rows}, outcome.source
    )
    outcome.quarantine = pd.concat([outcome.quarantine, moved], ignore_index=True)
    outcome.rule_counts[rule.name] = {"column": rule.column, "rows": len(rows)}
    log.warning(
        "%s: %d row(s) %s (rule %s): quarantined", outcome.source, len(rows), broken, rule.name
    )


def save_quarantine(batch: Batch, folder: Path) -> None:
    for name, rows in batch.quarantine.items():
        folder.mkdir(parents=True, exist_ok=True)
        rows.to_csv(folder / f"{name}.csv", index=False)
        log.warning("%d row(s) of %s quarantined in %s", len(rows), name, folder / f"{name}.csv")


def moved_splits(
    events: pd.DataFrame, catalogue: pd.DataFrame, history_max: int, window_days: int
) -> tuple[dict[str, pd.DataFrame], dict]:
    """Rows of every event, split by target time: the newest ``window_days`` are test, the
    window before is valid, everything earlier is train."""
    rows = sequences.build_sequences(events, catalogue, history_max=history_max)
    newest = int(rows["timestamp"].max())
    test_start = newest - window_days * DAY + 1
    valid_start = test_start - window_days * DAY
    splits = sequences.split_by_time(rows, valid_start, test_start)
    for name, frame in splits.items():
        if frame.empty:
            raise ValueError(
                f"retrain: the {name} split is empty with window_days={window_days}; "
                "use a wider window or add more logs"
            )
    sequences.check_no_leakage(
        splits["train"], valid_start, held_out=[splits["valid"], splits["test"]]
    )
    windows = {
        "valid_start": sequences.iso_date(valid_start),
        "test_start": sequences.iso_date(test_start),
        "newest_event": sequences.iso_date(newest),
        **{f"{name}_rows": int(len(frame)) for name, frame in splits.items()},
    }
    return splits, windows


def hold_out_newest(events: pd.DataFrame, days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The demo's split of the seed events: (everything older, the newest ``days`` as a log)."""
    start = int(events["timestamp"].max()) - days * DAY + 1
    newest = events["timestamp"] >= start
    held = events[newest][["user_id", "item_id", "timestamp", "rating"]].reset_index(drop=True)
    return events[~newest].reset_index(drop=True), held
