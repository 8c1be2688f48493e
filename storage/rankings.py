"""The rankings table: one Parquet file per selection, ``<store>/rankings/dataset=<fp>/run=<id>.parquet``.

One row per (model, method). Columns (schema version 2)::

    run_id string, created_at timestamp[us, UTC], dataset string, dataset_fingerprint string,
    model string, method string, score double (null when not scored), rank int32 (1 = best; null
    when not scored), n_samples int64, n_classes int32, mlflow_run_id string (empty when tracking
    failed), flow_run_id string, params_json string, status string ("ok" | "failed" | "excluded"),
    error string,
    p_best double, rank_low int32, rank_high int32, tied_with_best bool, score_low double,
    score_high double (the paired bootstrap, docs/uncertainty.md; null when it was off or the method
    too slow to resample), params int64, gflops double, images_per_s double (the model's cost,
    repeated on each of its rows; null when unknown), pareto bool (on the score-versus-GFLOPs front of
    this method)

``status`` and ``error`` extend ARCHITECTURE.md's list so that a model that failed stays visible in
the table with its reason; ``excluded`` is a model left out by ``--max-params``/``--max-gflops``.
Files of schema version 1 lack the columns of version 2; ``lead history`` reads both (DuckDB
``union_by_name``), the old rows with nulls there.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage.files import atomic_write

RANKINGS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("dataset", pa.string()),
        ("dataset_fingerprint", pa.string()),
        ("model", pa.string()),
        ("method", pa.string()),
        ("score", pa.float64()),
        ("rank", pa.int32()),
        ("n_samples", pa.int64()),
        ("n_classes", pa.int32()),
        ("mlflow_run_id", pa.string()),
        ("flow_run_id", pa.string()),
        ("params_json", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("p_best", pa.float64()),
        ("rank_low", pa.int32()),
        ("rank_high", pa.int32()),
        ("tied_with_best", pa.bool_()),
        ("score_low", pa.float64()),
        ("score_high", pa.float64()),
        ("params", pa.int64()),
        ("gflops", pa.float64()),
        ("images_per_s", pa.float64()),
        ("pareto", pa.bool_()),
    ],
    metadata={"lead.schema_version": "2", "lead.table": "rankings"},
)


def rankings_path(store: Path, dataset_fingerprint: str, run_id: str) -> Path:
    return Path(store) / "rankings" / f"dataset={dataset_fingerprint}" / f"run={run_id}.parquet"


def write_rankings(store: Path, dataset_fingerprint: str, run_id: str, rows: list[dict]) -> Path:
    """Write one selection's rows atomically (temporary file, then ``os.replace``). Returns the path."""
    table = pa.Table.from_pylist(rows, schema=RANKINGS_SCHEMA)
    return atomic_write(rankings_path(store, dataset_fingerprint, run_id), lambda tmp: pq.write_table(table, tmp))
