"""Benchmark results: a Parquet table per bench run and the score-versus-accuracy figure.

Table ``<store>/bench/suite=<name>/run=<run id>.parquet``, one row per (dataset, method): ``run_id,
created_at, suite, dataset, method, n_models, weighted_tau, kendall_tau, spearman_rho, top1_hit,
regret, note``; figure ``run=<run id>.png`` beside it.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage.files import atomic_write
from storage.tables import table_schema
from storage.store import Store

BENCH_SCHEMA = table_schema(
    "bench",
    "run_id string, created_at timestamp, suite string, dataset string, method string, "
    "n_models int32, weighted_tau float64, kendall_tau float64, spearman_rho float64, "
    "top1_hit float64, regret float64, note string",
)


def bench_dir(store: Path, suite: str) -> Path:
    return Store.of(store).bench_dir(suite)


def write_bench_table(store: Path, suite: str, run_id: str, created_at: datetime, rows: list[dict]) -> Path:
    """Write one bench run's rows atomically; returns the Parquet path."""
    full = [{**r, "run_id": run_id, "created_at": created_at, "suite": suite} for r in rows]
    table = pa.Table.from_pylist(full, schema=BENCH_SCHEMA)
    return Store.of(store).write(bench_dir(store, suite) / f"run={run_id}.parquet", lambda tmp: pq.write_table(table, tmp))


def plot_scores(
    path: Path,
    scores: dict[str, dict[str, dict[str, float]]],
    accuracies: dict[str, dict[str, float]],
    rows: list[dict],
    methods: list[str],
    unit: str,
) -> Path:
    """Score against fine-tuned accuracy: one panel per dataset (columns) and method (rows), each titled
    with its weighted tau. Written atomically as a PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(accuracies)
    taus = {(r["dataset"], r["method"]): r["weighted_tau"] for r in rows}
    fig, axes = plt.subplots(
        len(methods), len(datasets), figsize=(3.2 * len(datasets), 2.6 * len(methods)), squeeze=False, constrained_layout=True
    )
    for i, method in enumerate(methods):
        for j, dataset in enumerate(datasets):
            ax = axes[i][j]
            got = scores.get(dataset, {}).get(method, {})
            models = [m for m in accuracies[dataset] if m in got and math.isfinite(got[m])]
            ax.scatter([accuracies[dataset][m] for m in models], [got[m] for m in models], s=18)
            for m in models:
                ax.annotate(m, (accuracies[dataset][m], got[m]), fontsize=6, alpha=0.7)
            tau = taus.get((dataset, method), math.nan)
            ax.set_title(f"{dataset} · {method} · τw={tau:.2f}" if math.isfinite(tau) else f"{dataset} · {method} · n/a", fontsize=8)
            ax.tick_params(labelsize=6)
            ax.margins(x=0.3, y=0.15)
            if i == len(methods) - 1:
                ax.set_xlabel(f"fine-tuned accuracy ({unit})", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{method} score", fontsize=7)
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
