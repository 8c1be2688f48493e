"""The rankings table: one Parquet file per selection, ``<store>/rankings/dataset=<fp>/run=<id>.parquet``.

One row per (model, method). Columns (schema version 2)::

    run_id string, created_at timestamp[us, UTC], dataset string, dataset_fingerprint string,
    model string, method string, score double (null when not scored), rank int32 (1 = best; null
    when not scored), n_samples int64, n_classes int32, mlflow_run_id string (empty when tracking
    failed), flow_run_id string, params_json string, status string ("ok" | "failed" | "excluded"),
    error string,
    worker string, device string, extract_start timestamp[us, UTC], extract_end timestamp[us, UTC],
    p_best double, rank_low int32, rank_high int32, tied_with_best bool, score_low double,
    score_high double (the paired bootstrap, docs/uncertainty.md; null when it was off or the method
    too slow to resample), params int64, gflops double, images_per_s double (the model's cost,
    repeated on each of its rows; null when unknown), pareto bool (on the score-versus-GFLOPs front of
    this method; null for a model not ranked)

``worker`` (``host:pid``), ``device`` (``cpu``, ``cuda:N`` in the host's numbering) and the two times say
where and when the model's logits file was made (for a cached model: by the run that made it); empty
and null when the model failed before, or for files made before they were recorded.

``status`` and ``error`` extend ARCHITECTURE.md's list so that a model that failed stays visible in
the table with its reason; ``excluded`` is a model left out by ``--max-params``/``--max-gflops``.
Files of schema version 1 lack the columns of version 2; ``lead history`` reads both (DuckDB
``union_by_name``), the old rows with nulls there.
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
    "status string, error string, worker string, device string, extract_start timestamp, extract_end timestamp, "
    "p_best float64, rank_low int32, rank_high int32, tied_with_best bool, score_low float64, score_high float64, "
    "params int64, gflops float64, images_per_s float64, pareto bool",
    version="2",
)

#: The bootstrap's columns, from a model's ``uncertainty[method]``.
UNCERTAINTY_COLUMNS = ("p_best", "rank_low", "rank_high", "tied_with_best", "score_low", "score_high")


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
            "params_json": params_json,
            "status": "excluded" if m.status == "excluded" else "ok" if method in m.scores else "failed",
            "error": m.error or m.method_errors.get(method, ""),
            "worker": m.extraction.worker if m.extraction else "", "device": m.extraction.device if m.extraction else "",
            "extract_start": _time(m.extraction.start) if m.extraction else None,
            "extract_end": _time(m.extraction.end) if m.extraction else None,
            **{k: m.uncertainty.get(method, {}).get(k) for k in UNCERTAINTY_COLUMNS},
            "params": m.cost.get("params"), "gflops": m.cost.get("gflops"), "images_per_s": m.cost.get("images_per_s"),
            "pareto": m.pareto.get(method) if m.ok else None,
        }
        for m in sel.models
        for method in sel.methods
    ]
