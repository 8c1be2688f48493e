"""The outcomes table: real fine-tuned accuracies, append-only, one Parquet file per ``add`` or ``import``.

``<store>/outcomes/part-<UTC timestamp>-<uuid>.parquet``, written atomically (``storage.files.atomic_write``)
under a file lock (``<store>/outcomes/.lock``) so that two writers cannot both record the same key.
Columns (schema version 1)::

    outcome_id string, recorded_at timestamp[us, UTC], dataset string, dataset_fingerprint string (of the
    dataset's latest selection when recorded), model string, metric string, value double (as given),
    unit string ("percent" | "fraction"), accuracy double (percent), note string, source string
    ("cli" | "mlflow:<run id>"), replaced double (the accuracy this row supersedes; null when none)

The current value of a (dataset, model, metric) is its newest row; DuckDB's views ``outcomes`` (current)
and ``outcomes_log`` (every row) show them (:mod:`storage.history`). Policy: :mod:`lead.trackrecord`.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lead.errors import InputError
from lead.trackrecord import Outcome, Reconciled, Recorded, check_outcome, reconcile
from storage.tables import table_schema
from storage.store import OUTCOMES_GLOB, Store

OUTCOMES_SCHEMA = table_schema(
    "outcomes",
    "outcome_id string, recorded_at timestamp, dataset string, dataset_fingerprint string, "
    "model string, metric string, value float64, unit string, accuracy float64, note string, "
    "source string, replaced float64",
)
#: Seconds to wait for another process recording outcomes.
LOCK_TIMEOUT_S = 60


def outcomes_dir(store: Path) -> Path:
    return Store.of(store).outcomes_dir


def outcome_files(store: Path) -> list[Path]:
    """The finished outcome files, oldest first (temporary ``.part-*.tmp`` files are never matched)."""
    return Store.of(store).files(OUTCOMES_GLOB)


def read_log(store: Path) -> list[dict]:
    """Every outcome row ever written, oldest first."""
    files = outcome_files(store)
    if not files:
        return []
    rows = pa.concat_tables([pq.read_table(f, schema=OUTCOMES_SCHEMA) for f in files]).to_pylist()
    return sorted(rows, key=lambda r: (r["recorded_at"], r["outcome_id"]))


def current(store: Path) -> dict[tuple[str, str, str], dict]:
    """``{(dataset, model, metric): newest row}``."""
    return {(r["dataset"], r["model"], r["metric"]): r for r in read_log(store)}


def current_accuracies(store: Path) -> dict[str, dict[str, dict[str, float]]]:
    """``{dataset: {metric: {model: accuracy in percent}}}`` of the current values."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (dataset, model, metric), r in current(store).items():
        out.setdefault(dataset, {}).setdefault(metric, {})[model] = r["accuracy"]
    return out


def digest(store: Path) -> str:
    """sha256 over the current values (dataset, model, metric, accuracy), sorted: it changes exactly when
    an outcome is added or replaced by a different value."""
    h = hashlib.sha256()
    for key, r in sorted(current(store).items()):
        h.update(repr((*key, round(r["accuracy"], 9))).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class RecordResult:
    """What ``record`` did: ``path`` of the file written (None when nothing was new), ``written`` (the
    outcomes in it), ``repeats`` (identical to a recorded value: not written), ``replaced``
    ({key: old accuracy}), ``notes`` (warnings worth showing, e.g. a percentage that looks like a fraction)."""

    path: Path | None
    written: list[Outcome]
    repeats: list[Outcome]
    replaced: dict
    notes: list[str]


def _resolve(outcomes: Iterable[Outcome], fingerprints: dict[str, str]) -> list[Outcome]:
    """A dataset given by the fingerprint of a selection is recorded under that selection's name."""
    from dataclasses import replace

    return [replace(o, dataset=fingerprints[o.dataset]) if o.dataset in fingerprints else o for o in outcomes]


def record(store: Path, outcomes: list[Outcome], replace: bool = False, where: str = "outcomes") -> RecordResult:
    """Validate a batch of outcomes, reconcile it with the store, and write what is new as one file.

    All or nothing: when any outcome is invalid or conflicts (see :mod:`lead.trackrecord`), nothing is
    written.

    Raises:
        InputError: the store has no selections, an invalid outcome (one line each, all listed), or
            conflicts with recorded values (one line each) without ``replace``.
    """
    from filelock import FileLock

    from storage.history import query, ranked_models

    if not outcomes:
        raise InputError(f"{where}: at least one outcome must be given; got none.")
    ranked, fingerprints = ranked_models(store)
    outcomes = _resolve(outcomes, fingerprints)
    problems, valid = [], []
    for o in outcomes:
        try:
            valid.append(check_outcome(o, ranked, where=where))
        except InputError as err:
            problems.append(str(err))
    if problems:
        raise InputError(problems[0] if len(problems) == 1 else
                         f"{where}: every outcome must be valid; got {len(problems)} invalid: " + " | ".join(problems))
    notes = [f"{o.model} on {o.dataset}: {o.metric} = {o.value:g} percent looks like a fraction; if it is, record it "
             "again with --unit fraction --replace" for o in valid if o.unit == "percent" and 0 < o.value <= 1]
    outcomes_dir(store).mkdir(parents=True, exist_ok=True)
    with FileLock(str(Store.of(store).outcomes_lock), timeout=LOCK_TIMEOUT_S):
        now = current(store)
        rec: Reconciled = reconcile(valid, {k: Recorded(r["accuracy"], f"{r['recorded_at']:%Y-%m-%d %H:%M:%S}", r["source"])
                                            for k, r in now.items()}, replace=replace)
        if rec.conflicts:
            raise InputError(f"{where}: {rec.conflicts[0]}" if len(rec.conflicts) == 1 else
                             f"{where}: recorded values must not be changed silently; got {len(rec.conflicts)} conflicts: "
                             + " | ".join(rec.conflicts))
        if not rec.write:
            return RecordResult(None, [], rec.repeats, {}, notes)
        latest_fp = {r["dataset"]: r["fp"] for r in query(
            store, "SELECT dataset, arg_max(dataset_fingerprint, created_at) AS fp FROM rankings GROUP BY dataset").to_pylist()}
        at = datetime.now(UTC)
        rows = [{"outcome_id": uuid.uuid4().hex, "recorded_at": at, "dataset": o.dataset,
                 "dataset_fingerprint": latest_fp.get(o.dataset, ""), "model": o.model, "metric": o.metric,
                 "value": o.value, "unit": o.unit, "accuracy": o.accuracy, "note": o.note, "source": o.source,
                 "replaced": rec.replaced.get(o.key)} for o in rec.write]
        table = pa.Table.from_pylist(rows, schema=OUTCOMES_SCHEMA)
        path = outcomes_dir(store) / f"part-{at:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
        Store.of(store).write(path, lambda tmp: pq.write_table(table, tmp))
    return RecordResult(path, rec.write, rec.repeats, rec.replaced, notes)


def track_record_inputs(store: Path) -> tuple[dict, dict]:
    """What the track record is made of: ``(scores[dataset][method][model]`` of each dataset's latest
    selection, ``outcomes[dataset][metric][model]`` current accuracies in percent)."""
    from storage.history import latest_scores

    return latest_scores(store)[0], current_accuracies(store)
