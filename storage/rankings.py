"""The rankings table: one Parquet file per selection, ``<store>/rankings/dataset=<fp>/run=<id>.parquet``.

One row per (model, method). Columns (schema version 2)::

    run_id string, created_at timestamp[us, UTC], dataset string, dataset_fingerprint string,
    model string, method string, score double (null when not scored), rank int32 (1 = best; null
    when not scored), n_samples int64, n_classes int32, mlflow_run_id string (empty when tracking
    failed), flow_run_id string, params_json string, status string ("ok" | "failed"), error string,
    worker string, device string, extract_start timestamp[us, UTC], extract_end timestamp[us, UTC]

``worker`` (``host:pid``), ``device`` (``cpu``, ``cuda:N`` in the host's numbering) and the two times say
where and when the model's logits file was made (for a cached model: by the run that made it); empty
and null when the model failed before, or for files made before they were recorded. Version 1 tables
lack these four columns; the history views read both (``union_by_name``: null there).

``status`` and ``error`` extend ARCHITECTURE.md's list so that a model that failed stays visible in
the table with its reason.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lead.selection import Selection
from storage.tables import table_schema
from storage.store import Store

RANKINGS_SCHEMA = table_schema(
    "rankings",
    "run_id string, created_at timestamp, dataset string, dataset_fingerprint string, "
    "model string, method string, score float64, rank int32, n_samples int64, "
    "n_classes int32, mlflow_run_id string, flow_run_id string, params_json string, "
    "status string, error string, worker string, device string, extract_start timestamp, extract_end timestamp",
    version="2",
)


def _time(iso: str) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


def rankings_path(store: Store | Path, dataset_fingerprint: str, run_id: str) -> Path:
    return Store.of(store).rankings_file(dataset_fingerprint, run_id)


def write_rankings(store: Path, dataset_fingerprint: str, run_id: str, rows: list[dict]) -> Path:
    """Write one selection's rows atomically (temporary file, then ``os.replace``). Returns the path."""
    table = pa.Table.from_pylist(rows, schema=RANKINGS_SCHEMA)
    return Store.of(store).write(rankings_path(store, dataset_fingerprint, run_id), lambda tmp: pq.write_table(table, tmp))


def selection_rows(sel: Selection, *, created_at: datetime, params_json: str, mlflow_run_id: str,
                   flow_run_id: str) -> list[dict]:
    """The rankings rows of a selection: one per (model, method), best model first."""
    return [
        {
            "run_id": sel.run_id, "created_at": created_at, "dataset": sel.dataset,
            "dataset_fingerprint": sel.dataset_fingerprint, "model": m.model, "method": method,
            "score": m.scores.get(method), "rank": m.ranks.get(method), "n_samples": sel.n_read,
            "n_classes": sel.n_classes, "mlflow_run_id": mlflow_run_id, "flow_run_id": flow_run_id,
            "params_json": params_json, "status": "ok" if method in m.scores else "failed",
            "error": m.error or m.method_errors.get(method, ""),
            "worker": m.extraction.worker if m.extraction else "", "device": m.extraction.device if m.extraction else "",
            "extract_start": _time(m.extraction.start) if m.extraction else None,
            "extract_end": _time(m.extraction.end) if m.extraction else None,
        }
        for m in sel.models
        for method in sel.methods
    ]
