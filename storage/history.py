"""Questions about past selections, answered by DuckDB in-process over the store's Parquet files.

Four views are defined on every connection:

- ``rankings``: every selection's rows (see :mod:`storage.rankings` for the columns).
- ``logits``: every logits file, with ``dataset`` (fingerprint) from the hive partition folder, ``model``
  (the id in the file's ``lead.model`` metadata, else the folder's, percent-decoded by DuckDB), plus ``sample_id``, ``label``, ``features FLOAT[]``, ``logits FLOAT[]``.
- ``outcomes``: the current real fine-tuned accuracy of each (dataset, model, metric) (see
  :mod:`storage.outcomes` for the columns); ``outcomes_log``: every outcome row ever recorded.

Only finished files are visible: temporary files being written start with '.' and end in '.tmp'.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from storage.rankings import RANKINGS_SCHEMA
from storage.store import LOGITS_GLOB, OUTCOMES_GLOB, RANKINGS_GLOB, Store

#: The default answer of ``lead history``: one line per selection and method with its best model(s)
#: (ties listed together), newest first, the ranking method first within a selection. Selections in
#: which no model could be scored are listed too, with an empty best model.
SELECTIONS_SQL = """
SELECT any_value(created_at) AS created_at, any_value(dataset) AS dataset, method,
       string_agg(model, ', ' ORDER BY model) FILTER (WHERE rank = 1) AS best_model,
       max(score) AS score,
       count(*) FILTER (WHERE status = 'ok') AS models_scored, count(*) AS models,
       any_value(n_samples) AS n_samples, any_value(n_classes) AS n_classes,
       run_id, any_value(mlflow_run_id) AS mlflow_run_id
FROM rankings
{where}
GROUP BY run_id, method
ORDER BY any_value(created_at) DESC, run_id, min(instr(params_json, '"' || method || '"'))
"""


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def connect(store: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the ``rankings`` and ``logits`` views over ``store``."""
    store = Store.of(store)
    con = duckdb.connect(":memory:")
    if store.files(RANKINGS_GLOB):
        glob = store.glob_path(RANKINGS_GLOB)
        con.sql(
            f"CREATE VIEW rankings AS SELECT * FROM read_parquet({_sql_str(glob)}, hive_partitioning=false, union_by_name=true)"
        )
    else:
        con.register("_empty_rankings", pa.Table.from_pylist([], schema=RANKINGS_SCHEMA))
        con.sql("CREATE VIEW rankings AS SELECT * FROM _empty_rankings")
    if store.files(LOGITS_GLOB):
        glob = store.glob_path(LOGITS_GLOB)
        # the model id comes from each file's `lead.model` (a long id's folder name is bounded and hashed,
        # storage.logits.encode_model_id); the partition value stands in for a file without it
        con.sql(
            f"CREATE VIEW logits AS SELECT l.* EXCLUDE (filename) REPLACE (coalesce(m.model, l.model) AS model) "
            f"FROM read_parquet({_sql_str(glob)}, hive_partitioning=true, union_by_name=true, filename=true) AS l "
            f"LEFT JOIN (SELECT file_name, decode(value) AS model FROM parquet_kv_metadata({_sql_str(glob)}) "
            f"WHERE decode(key) = 'lead.model') AS m ON l.filename = m.file_name"
        )
    else:
        con.sql(
            "CREATE VIEW logits AS SELECT * FROM (SELECT NULL::VARCHAR AS sample_id, NULL::INTEGER AS label, "
            "NULL::FLOAT[] AS features, NULL::FLOAT[] AS logits, NULL::VARCHAR AS dataset, NULL::VARCHAR AS model) WHERE false"
        )
    _outcome_views(con, store)
    return con


#: The current outcome of each (dataset, model, metric): its newest row.
OUTCOMES_VIEW_SQL = """
CREATE VIEW outcomes AS
SELECT * EXCLUDE (rn) FROM (
  SELECT *, row_number() OVER (PARTITION BY dataset, model, metric ORDER BY recorded_at DESC, outcome_id DESC) AS rn
  FROM outcomes_log)
WHERE rn = 1
"""


def _outcome_views(con: duckdb.DuckDBPyConnection, store: Store) -> None:
    """Views ``outcomes_log`` (every outcome row, append-only) and ``outcomes`` (current values)."""
    from storage.outcomes import OUTCOMES_SCHEMA

    if store.files(OUTCOMES_GLOB):
        glob = store.glob_path(OUTCOMES_GLOB)
        con.sql(f"CREATE VIEW outcomes_log AS SELECT * FROM read_parquet({_sql_str(glob)}, union_by_name=true)")
    else:
        con.register("_empty_outcomes", pa.Table.from_pylist([], schema=OUTCOMES_SCHEMA))
        con.sql("CREATE VIEW outcomes_log AS SELECT * FROM _empty_outcomes")
    con.sql(OUTCOMES_VIEW_SQL)


def query(store: Path, sql: str) -> pa.Table:
    """Run ``sql`` against the views and return the result as an Arrow table.

    Raises:
        duckdb.Error: invalid SQL (the message is DuckDB's).
    """
    con = connect(store)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def selections(store: Path, dataset: str | None = None) -> pa.Table:
    """Past selections (best model per method per run), newest first; ``dataset`` filters by name or fingerprint."""
    where = ""
    if dataset:
        where = f"WHERE dataset = {_sql_str(dataset)} OR dataset_fingerprint = {_sql_str(dataset)}"
    return query(store, SELECTIONS_SQL.format(where=where))


def ranked_models(store: Path) -> tuple[dict[str, set[str]], dict[str, str]]:
    """Every model ranked per dataset name, over all selections, and ``{fingerprint: dataset name}``
    (the latest name a fingerprint was ranked under)."""
    rows = query(store, "SELECT dataset, dataset_fingerprint, model, created_at FROM rankings").to_pylist()
    models: dict[str, set[str]] = {}
    names: dict[str, tuple] = {}
    for r in rows:
        models.setdefault(r["dataset"], set()).add(r["model"])
        if r["dataset_fingerprint"] not in names or names[r["dataset_fingerprint"]][0] < r["created_at"]:
            names[r["dataset_fingerprint"]] = (r["created_at"], r["dataset"])
    return models, {fp: v[1] for fp, v in names.items()}


#: Per dataset name, the rows of its latest selection (newest ``created_at``; ties by run id).
LATEST_SCORES_SQL = """
WITH latest AS (
  SELECT dataset, arg_max(run_id, (created_at, run_id)) AS run_id FROM rankings GROUP BY dataset
)
SELECT r.dataset, r.run_id, r.method, r.model, r.score
FROM rankings r JOIN latest USING (dataset, run_id)
WHERE r.status = 'ok' AND r.score IS NOT NULL AND isfinite(r.score)
ORDER BY r.dataset, r.method, r.model
"""


def latest_scores(store: Path) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, str], list[str]]:
    """The latest selection of every dataset (by name): ``(scores[dataset][method][model], {dataset: run id},
    the methods present, in registry order (lead.scoring.METHODS), others after by name)``. Only scored rows."""
    from lead.scoring import METHODS

    rows = query(store, LATEST_SCORES_SQL).to_pylist()
    scores: dict[str, dict[str, dict[str, float]]] = {}
    runs: dict[str, str] = {}
    for r in rows:
        scores.setdefault(r["dataset"], {}).setdefault(r["method"], {})[r["model"]] = r["score"]
        runs[r["dataset"]] = r["run_id"]
    present = {m for v in scores.values() for m in v}
    return scores, runs, [m for m in METHODS if m in present] + sorted(present - set(METHODS))
