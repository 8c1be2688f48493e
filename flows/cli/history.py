"""``lead history``: past selections, answered by DuckDB over the store's Parquet files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import DebugOpt, StoreOpt, _console, app, exits


@app.command()
def history(
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Only selections of this dataset (name or fingerprint).")] = None,
    sql: Annotated[str | None, typer.Option("--sql", help="A DuckDB query over the views `rankings`, `logits`, `outcomes` "
                                            "and `outcomes_log`.")] = None,
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print rows as JSON lines.")] = False,
    plot: Annotated[bool, typer.Option("--plot", help="Draw the --dataset's past selections over time (each run's "
                                       "ranking method, one line per model, the bootstrap interval as a band) to a PNG.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="With --plot: the PNG to write (default "
                                             "<store>/figures/history-<dataset>.png).")] = None,
    debug: DebugOpt = False,
):
    """Past selections, answered by DuckDB over the store's Parquet files.

    Without --sql: one line per selection and method with its best model, newest first.
    With --plot --dataset D: a PNG of D's past selections over time (docs/uncertainty.md).
    With --sql: any query over the views `rankings` (one row per run, model and method), `logits`
    (one row per image and model: sample_id, label, features, logits, dataset, model), `outcomes` (the
    current real fine-tuned accuracy per dataset, model and metric: `lead outcomes`) and `outcomes_log`
    (every outcome ever recorded). Example:

        lead history --sql "SELECT model, avg(score) FROM rankings WHERE method='lead' GROUP BY model"
    """
    from lead.config import Settings
    from storage.history import query, selections

    settings = Settings.from_env(store=store)
    if not settings.store.is_dir():
        typer.secho(f"error: history: the store {settings.store} must exist; got no such folder. "
                    "Pass --store or set LEAD_STORE.", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    if plot:
        from lead.errors import InputError
        from storage.figures import write_history_figure

        with exits(debug):  # no --dataset, or nothing to draw: status 2
            if not dataset:
                raise InputError("history --plot: --dataset must name the dataset to draw; got none.")
            path = write_history_figure(settings.store, dataset, out)
        typer.echo(f"history of {dataset}: {path}")
        return
    with exits(debug):  # a DuckDB error in --sql: status 2
        table = query(settings.store, sql) if sql else selections(settings.store, dataset)
    rows = table.to_pylist()
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r, default=str))
        return
    from rich.table import Table

    out = Table(title=None if sql else f"Selections in {settings.store}")
    for col in table.column_names:
        out.add_column(col)
    for r in rows:
        out.add_row(*[_cell(v) for v in r.values()])
    _console().print(out)
    if not rows:
        typer.echo("no rows" + ("" if sql else ": run `lead rank` first"))


def _cell(v) -> str:
    from datetime import datetime

    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list):
        return f"[{len(v)} values]"
    return "" if v is None else str(v)
