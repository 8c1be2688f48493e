"""The ``lead`` command: the front door over the flows and the store.

Errors in the input (a dataset, a zoo file, a method name) print one line and exit with status 2;
``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="lead",
    help=(
        "Rank a zoo of pre-trained image models for a labelled dataset without fine-tuning them, "
        "by the LEAD transferability score (Hu et al., CVPR 2024). Rankings run as Prefect flows, features "
        "and logits are stored as Parquet, every selection is recorded in MLflow, and `lead history` "
        "answers questions about past selections with DuckDB."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

from lead.scoring import DEFAULT_METHODS  # noqa: E402  (light: numpy and scipy only)

_DEFAULT_METHOD = "default"
METHOD_HELP = (
    "Comma-separated transferability scores, 'all', 'default' or 'auto'; the first one ranks (on a dataset too "
    "small for it, e.g. under 64 images for gbc, the next one that can). Known: lead, logme, leep, nce, nleep, hscore, "
    "sfda, gbc, transrate, and rank-aggregation ensembles such as mean-rank:logme:lead. 'auto': the method with the "
    "best track record in this store (`lead bench --history`) once measured on 3 datasets, else the default. "
    "Default: lead,logme: chosen by leave-one-target-out over the project's 13 benchmark targets with real "
    "fine-tuned accuracies (docs/benchmarks.md): LEAD had the best mean weighted tau of the scale-free scores "
    "(0.708; the LogME+LEAD mean-rank ensemble 0.707, LogME 0.639, GBC 0.462), so LEAD ranks and LogME is "
    "computed beside it."
)

def _version(value: bool) -> None:
    if value:
        from lead import __version__

        typer.echo(f"lead {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Rank a zoo of pre-trained image models for a labelled dataset without fine-tuning them."""


StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", help="Store folder for datasets, logits, rankings and MLflow. (env: LEAD_STORE; default: ./lead-store)"),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")]


def _fail(err: BaseException, debug, code: int = 1):
    """Print ``err`` as one red line and exit with ``code``; with ``debug`` (True or the original
    exception) re-raise instead so the traceback shows."""
    if debug:
        raise (debug if isinstance(debug, BaseException) else err)
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _quiet(verbose: bool) -> None:
    """Keep the terminal for the progress bars and the ranking: Prefect and MLflow log warnings only,
    unless --verbose. Telemetry is off (these machines are often offline)."""
    import logging

    # Without --verbose the CLI itself reports every warning and error (notes, skipped images, failed
    # models), so Prefect's copies of them, and its tracebacks, stay out of the terminal.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "CRITICAL")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    if not verbose:
        for name in ("mlflow", "alembic", "huggingface_hub", "urllib3"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _terminate_children() -> None:
    """SIGTERM every process below this one (the temporary Prefect server, the DataLoader fork server and
    its workers), which an immediate exit would otherwise leave running. Linux (/proc) only; elsewhere a
    no-op. (They would also end by themselves: see lead.processes.)"""
    from lead.processes import descendants, signal_all

    signal_all(descendants())


INTERRUPTED = "interrupted: finished logits files are kept; run the same command again to resume."

#: Exit status after a stop by signal: 128 + the signal's number, as a shell reports it (130 for Ctrl-C).
_STOPPED_BY: dict[str, int] = {"status": 130}


def _end_runs_killed() -> None:
    """Mark the MLflow runs this process started and has not ended as KILLED (a stopped ranking is not
    a finished selection); a failure here is left to the next ranking on the store, which ends runs whose
    process is gone (storage.tracking.Tracker.end_dead_runs)."""
    if "storage.tracking" not in sys.modules:  # no run was started
        return
    from storage.tracking import Tracker

    try:
        Tracker.end_open_runs("KILLED")
    except Exception as err:  # noqa: BLE001 - the stop must go on
        sys.stderr.write(f"MLflow: could not mark the run KILLED ({type(err).__name__}: {err}); the next ranking on "
                         "this store marks it\n")


def _interrupted():
    """Stop after an interruption: MLflow runs ended as KILLED, children terminated, one line, exit status
    128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""
    _end_runs_killed()
    _terminate_children()
    typer.secho(INTERRUPTED, fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(_STOPPED_BY["status"])


#: Seconds a Ctrl-C leaves running extractions to stop after their current batch and remove their
#: temporary files, before the process exits.
INTERRUPT_GRACE_S = 3.0


def _cancel_on_interrupt():
    """On Ctrl-C (SIGINT) or SIGTERM (timeout, systemd, Docker, CI cancellation) stop promptly and cleanly:
    running extractions stop after their current batch (their temporary files are removed; finished logits
    files stay for the rerun), the MLflow runs of this process end as KILLED, the processes it started are
    terminated, and it exits with status 130 (SIGINT) or 143 (SIGTERM). Unwinding through Prefect instead
    took minutes here, because Ctrl-C also stops the ephemeral Prefect server and the client retries it.
    A second signal exits at once (the processes it started still end: lead.processes.die_with_parent).

    Returns a function that puts the previous handlers back (for in-process callers such as tests).
    """
    import signal
    import threading
    import time

    from lead.extract import CANCEL

    def leave():
        time.sleep(INTERRUPT_GRACE_S)
        _end_runs_killed()
        _terminate_children()
        sys.stderr.write(INTERRUPTED + "\n")
        sys.stderr.flush()
        os._exit(_STOPPED_BY["status"])

    def handler(signum, frame):
        if CANCEL.is_set():
            os._exit(_STOPPED_BY["status"])
        _STOPPED_BY["status"] = 128 + signum
        CANCEL.set()
        sys.stderr.write("\ninterrupting: stopping the extractions after their current batch...\n")
        threading.Thread(target=leave, daemon=True).start()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(sig, h) for sig, h in previous.items()]


def _run_flow(flow, **params):
    """Run ``flow(**params)`` in a helper thread while the main thread waits and takes the signals.

    In the main thread Prefect's flow engine replaces the SIGTERM handler with its own, which unwinds
    through the task runner: it waits for every running extraction to finish before anything else
    happens. From a helper thread Prefect cannot install it, so SIGTERM takes the same path as Ctrl-C.
    The thread runs in a copy of this context (Prefect's settings, e.g. a test harness's API URL).
    """
    import contextvars
    import threading

    outcome: dict = {}

    def target():
        try:
            outcome["value"] = flow(**params)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = err

    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), name="lead-flow", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _console():
    """A rich console; when output is not a terminal, wide enough that tables are not truncated."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200, soft_wrap=True)


def _print_selection(sel: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    methods = sel["methods"]
    n_models = len(sel["models"])
    table = Table(
        title=f"Ranking of {n_models} model{'s' if n_models != 1 else ''} on {sel['dataset']} "
        f"({sel['n_samples']} images, {sel['n_classes']} classes), by {sel['primary_method']}",
        title_justify="left",
    )
    primary = sel["primary_method"]
    boot = any(primary in m.get("uncertainty", {}) for m in sel["models"])
    table.add_column("rank", justify="right")
    table.add_column("model")
    for m in methods:
        table.add_column(m, justify="right")
        if m == primary and boot:
            table.add_column("P(best)", justify="right")
    table.add_column("params", justify="right")
    table.add_column("GFLOPs", justify="right")
    table.add_column("extraction")
    table.add_column("status")
    for m in sel["models"]:
        extraction = m["extraction"]["status"] if m["extraction"] else "-"
        if m["extraction"] and m["extraction"]["status"] == "extracted":
            extraction += f" ({m['extraction']['seconds']:.1f} s)"
        u = m.get("uncertainty", {}).get(primary, {})
        rank = m["ranks"].get(primary)
        marker = "≈" if u.get("tied_with_best") and rank != 1 else ""
        cells = []
        for k in methods:
            cells.append(f"{m['scores'][k]:.4f}" if k in m["scores"] else "-")
            if k == primary and boot:
                cells.append(f"{u['p_best']:.2f}" if "p_best" in u else "-")
        cost = m.get("cost") or {}
        status = "ok" if m["status"] == "ok" else (m["error"] if m["status"] == "excluded" else
                                                  f"failed: {m['error'][:150]}{'...' if len(m['error']) > 150 else ''}")
        table.add_row(
            f"{marker}{rank}" if rank is not None else "-",
            m["model"],
            *cells,
            f"{cost['params'] / 1e6:.1f} M" if cost.get("params") else "-",
            f"{cost['gflops']:.3f}" if cost.get("gflops") else "-",
            extraction,
            status,
        )
    console.print(table)
    if boot:
        tied = [m["model"] for m in sel["models"] if m.get("uncertainty", {}).get(primary, {}).get("tied_with_best")
                and m["ranks"].get(primary) != 1]
        b = sel["bootstrap"]
        console.print(f"P(best): share of {b['resamples']} paired resamples of the images in which the model scores "
                      f"highest by {primary}" + (f"; ≈ tied with the best (its 90% rank interval reaches 1): "
                                                 f"{', '.join(tied)}" if tied else ""))
    front = [m["model"] for m in sel["models"] if m.get("pareto", {}).get(primary)]
    if front and any((m.get("cost") or {}).get("gflops") for m in sel["models"]):
        console.print(f"Pareto front ({primary} against GFLOPs): {', '.join(front)}")
    for note in (sel.get("bootstrap") or {}).get("notes", {}).values():
        console.print(f"[yellow]bootstrap[/yellow]: {escape(note)}")
    for method in methods:
        failed = {m["model"]: m["method_errors"][method] for m in sel["models"] if method in m.get("method_errors", {})
                  and m["status"] == "ok"}
        if failed:
            reasons = sorted(set(failed.values()))
            console.print(f"[yellow]{method} not computed for {len(failed)} model(s)[/yellow] ({', '.join(failed)}): "
                          f"{reasons[0]}{f' (and {len(reasons) - 1} other reasons)' if len(reasons) > 1 else ''}")
    for method in methods:
        ranks = [m["ranks"][method] for m in sel["models"] if method in m["ranks"]]
        if len(ranks) > 1 and len(set(ranks)) == 1:
            console.print(f"[yellow]{method} gives every model the same score[/yellow]: it does not tell them apart here.")
    if sel.get("auto"):
        console.print(f"method auto: ranked by [bold]{sel['primary_method']}[/bold]: {sel['auto']['reason']}")
    tied = sel.get("best_models", [])
    best = f"tie between {', '.join(tied[:-1])} and {tied[-1]}" if len(tied) > 1 else sel["best_model"] or "none"
    console.print(f"best model: [bold]{escape(best)}[/bold]   ({sel['seconds']:.1f} s)")
    for method, why in sel.get("dropped_methods", {}).items():
        console.print(f"[yellow]{method} left out of the default methods[/yellow]: it {why}")
    if sel.get("fallback"):
        console.print(f"[yellow]{sel['fallback']}[/yellow]")
    for note in sel.get("dataset_notes", []):
        console.print(f"[yellow]dataset[/yellow]: {note}")
    for warning in sel.get("warnings", []):
        console.print(f"[yellow]warning[/yellow]: {escape(warning)}")
    if sel.get("skipped_images"):
        shown = ", ".join(f"{x['sample_id']} ({x['error']})" for x in sel["skipped_images"][:10])
        more = f" and {len(sel['skipped_images']) - 10} more" if len(sel["skipped_images"]) > 10 else ""
        console.print(f"[yellow]skipped {len(sel['skipped_images'])} unreadable images[/yellow]: {shown}{more}")
    console.print(f"rankings table: {sel['rankings_path']}")
    ml = sel["mlflow"]
    if ml.get("run_id"):
        console.print(f"MLflow run: {ml['run_id']} in experiment lead/{sel['dataset']} ({ml['tracking_uri']})")
        console.print(f"open it with: {ml['ui_command']}  then {ml['url']}")
        if ml.get("runs_url"):
            console.print(f"runs table (scores, P(best), cost as columns): {ml['runs_url']}")
    if ml.get("error"):
        console.print(f"[red]MLflow logging failed[/red]: {ml['error']} (the ranking is in the rankings table)")


@app.command()
def rank(
    dataset: Annotated[
        str,
        typer.Option("--dataset", "-d", help="ImageFolder directory (a sub-folder per class), a CSV manifest with "
                     "columns path,label, or a built-in demo set: animal-mnist-fewshot, mnist-5k."),
    ],
    zoo: Annotated[
        str,
        typer.Option("--zoo", "-z", help="Zoo YAML file (name, arch, weights, input_size, mean, std per model) or a "
                     "built-in zoo: efficientnet-lite."),
    ],
    method: Annotated[
        str, typer.Option("--method", "-m", help=METHOD_HELP)
    ] = _DEFAULT_METHOD,
    store: StoreOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="Dataset name to record (default: folder or file name).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N. (env: LEAD_DEVICE)")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Images per forward pass. (env: LEAD_BATCH_SIZE; default 64)")] = None,
    max_workers: Annotated[int | None, typer.Option("--max-workers", min=1, help="Models extracted at once. (env: LEAD_MAX_WORKERS; default: GPUs, or 2)")] = None,
    num_workers: Annotated[int | None, typer.Option("--num-workers", min=0, help="DataLoader processes decoding images per model. (env: LEAD_NUM_WORKERS; default: min(4, cores))")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI. (env: MLFLOW_TRACKING_URI; default sqlite:///<store>/mlflow.db)")] = None,
    auto_min_datasets: Annotated[int | None, typer.Option("--auto-min-datasets", min=1, help="With --method auto: "
                                 "datasets of track record a method needs before auto ranks by it. (env: LEAD_AUTO_MIN_DATASETS; "
                                 "default 3)")] = None,
    bootstrap: Annotated[int | None, typer.Option("--bootstrap", min=0, help="Paired bootstrap resamples of the images "
                         "for P(best) and the 90% rank intervals; 0 turns it off. (env: LEAD_BOOTSTRAP; default 200)")] = None,
    bootstrap_seed: Annotated[int, typer.Option("--bootstrap-seed", min=0, help="Seed of the resamples.")] = 0,
    bootstrap_budget: Annotated[float | None, typer.Option("--bootstrap-budget", min=0.001, help="Seconds a score that is "
                                "recomputed on each resample (LogME, H-score, GBC, TransRate) may spend per model; fewer "
                                "resamples, or none (said so), when slower. (env: LEAD_BOOTSTRAP_BUDGET; default 5)")] = None,
    max_params: Annotated[float | None, typer.Option("--max-params", min=1, help="Leave out models with more parameters "
                          "(recorded as excluded, with the reason).")] = None,
    max_gflops: Annotated[float | None, typer.Option("--max-gflops", min=0.0, help="Leave out models needing more GFLOPs "
                          "per image at their input size (recorded as excluded).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the selection as JSON instead of a table.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
    debug: DebugOpt = False,
):
    """Rank every model of a zoo on a labelled image dataset.

    Extracts pre-logit features and logits of each model (cached: a second run on the same inputs does
    no forward pass), scores each model, prints the ranking, writes it to the rankings table and records
    the selection in MLflow (one parent run, one child run per model).
    """
    _quiet(verbose)
    if max_workers:
        os.environ["LEAD_MAX_WORKERS"] = str(max_workers)
    from lead.config import Settings
    from lead.data import check_rankable, resolve_dataset
    from lead.errors import DatasetError, InputError, ModelLoadError, ScoreError
    from lead.zoo import load_zoo

    restore = lambda: None  # noqa: E731 - the signal handlers to put back
    try:
        # Check the cheap things before a flow run starts, so mistakes cost a second, not a server start.
        settings = Settings.from_env(store=store)
        check_rankable(resolve_dataset(dataset, datasets_dir=settings.store / "datasets", name=name))
        from lead.extract import select_device

        select_device(device or settings.device)
        load_zoo(zoo)
        from flows.rank_zoo import parse_methods

        from lead.trackrecord import is_auto

        if not is_auto(method):
            parse_methods(method)
        from flows.rank_zoo import rank_zoo, task_runner

        flow = rank_zoo.with_options(task_runner=task_runner(Settings.from_env(store=store, max_workers=max_workers)))
        restore = _cancel_on_interrupt()
        from flows.ephemeral import ensure_api

        ensure_api()  # a temporary Prefect server that ends with this process, if none is configured
        sel = _run_flow(
            flow, dataset=dataset, zoo=zoo, methods=method, store=str(store) if store else None, tracking_uri=tracking_uri,
            dataset_name=name, device=device, batch_size=batch_size, num_workers=num_workers, show_progress=not as_json and sys.stderr.isatty() or verbose,
            auto_min_datasets=auto_min_datasets, bootstrap=bootstrap, bootstrap_seed=bootstrap_seed,
            bootstrap_budget=bootstrap_budget, max_params=max_params, max_gflops=max_gflops,
        )
        restore()
    except BaseException as err:
        from lead.extract import CANCEL

        if CANCEL.is_set() or isinstance(err, KeyboardInterrupt):  # the failures are the interruption
            _interrupted()
        restore()
        if isinstance(err, (InputError, DatasetError, ModelLoadError, ScoreError)):
            _fail(err, debug, code=2 if isinstance(err, InputError) else 1)
        if not isinstance(err, Exception):
            raise
        # anything unexpected still gets one line, unless --debug
        _fail(RuntimeError(f"{type(err).__name__}: {err} (run again with --debug for the traceback)"), debug and err, code=1)
    from lead.extract import CANCEL

    if CANCEL.is_set():  # interrupted after some models finished: not a complete ranking
        _interrupted()
    if as_json:
        typer.echo(json.dumps(sel, indent=2, default=str))
    else:
        _print_selection(sel)


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
    With --plot --dataset D: a PNG of D's past selections over time.
    With --sql: any query over the views `rankings` (one row per run, model and method), `logits`
    (one row per image and model: sample_id, label, features, logits, dataset, model), `outcomes` (the
    current real fine-tuned accuracy per dataset, model and metric: `lead outcomes`) and `outcomes_log`
    (every outcome ever recorded). Example:

        lead history --sql "SELECT model, avg(score) FROM rankings WHERE method='lead' GROUP BY model"
    """
    import duckdb

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

        if not dataset:
            _fail(InputError("history --plot: --dataset must name the dataset to draw; got none."), debug, code=2)
        try:
            path = write_history_figure(settings.store, dataset, out)
        except (InputError, duckdb.Error, OSError) as err:
            _fail(err, debug, code=2)
        typer.echo(f"history of {dataset}: {path}")
        return
    try:
        table = query(settings.store, sql) if sql else selections(settings.store, dataset)
    except duckdb.Error as err:
        _fail(err, debug, code=2)
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


bench_app = typer.Typer(
    help=(
        "Check transferability scores against real fine-tuned accuracies. `lead bench --suite FILE` ranks every "
        "dataset of a suite with every method and reports the weighted Kendall tau between scores and fine-tuned "
        "accuracies, per method and dataset, and the mean."
    ),
    no_args_is_help=False,
)
app.add_typer(bench_app, name="bench")


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    suite: Annotated[
        str | None,
        typer.Option("--suite", "-s", help="Suite YAML file (zoo, datasets, fine-tuned accuracies) or a built-in suite: "
                     "sfda-supervised, sfda-self-supervised (these need the internet)."),
    ] = None,
    method: Annotated[str, typer.Option("--method", "-m", help=METHOD_HELP)] = _DEFAULT_METHOD,
    history: Annotated[bool, typer.Option("--history", help="Instead of a suite: the store's track record, i.e. each "
                                          "dataset's latest selection against the outcomes recorded with `lead outcomes`.")] = False,
    zoo: Annotated[str | None, typer.Option("--zoo", "-z", help="With --history: the zoo (file or built-in name) whose "
                                            "entries give the static priors; without it they are left out.")] = None,
    metric: Annotated[str | None, typer.Option("--metric", help="With --history: judge every dataset on this outcome metric "
                                               "(default: per dataset, the one recorded for the most models).")] = None,
    store: StoreOpt = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI. (env: MLFLOW_TRACKING_URI)")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N. (env: LEAD_DEVICE)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
    debug: DebugOpt = False,
):
    """Rank every dataset of a suite with every method and report weighted tau against fine-tuned accuracy.

    Prints the table of weighted tau (dataset x method, and the mean per method; published values in
    brackets where the suite has them), writes it as Parquet under <store>/bench/, saves a figure of score
    against accuracy (a panel per dataset and method) and logs both to an MLflow run in experiment
    lead-bench/<suite>.

    With --history, the suite is the store's own track record: every dataset with outcomes
    (`lead outcomes add/import`) for at least 3 models scored by its latest selection, judged by the same
    table, logged to MLflow experiment lead-track-record; `lead rank --method auto` ranks by its best method.
    """
    if ctx.invoked_subcommand is not None:
        return
    if history:
        _bench_history(suite, store, tracking_uri, zoo, metric, as_json, debug)
        return
    if suite is None:
        typer.secho("error: bench: --suite (or --history) must be given; got neither. See `lead bench --help`.",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    _quiet(verbose)
    from lead.benchmark import load_suite
    from lead.errors import InputError

    try:
        load_suite(suite)
        from flows.rank_zoo import parse_methods

        methods = parse_methods(method)
        from flows.bench import bench as bench_flow
        from flows.ephemeral import ensure_api

        ensure_api()  # a temporary Prefect server that ends with this process, if none is configured
        result = bench_flow(suite=suite, methods=methods, store=str(store) if store else None, tracking_uri=tracking_uri,
                            device=device, show_progress=not as_json and sys.stderr.isatty())
    except InputError as err:
        _fail(err, debug, code=2)
    except Exception as err:  # anything unexpected still gets one line, unless --debug
        _fail(RuntimeError(f"{type(err).__name__}: {err} (run again with --debug for the traceback)"), debug and err, code=1)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    _print_bench(result)


@bench_app.command("build")
def bench_build(
    out: Annotated[Path, typer.Option("--out", help="Folder the suite is written to: <out>/<name>.yaml and <out>/<name>/.")] = Path("lead-suites"),
    work: Annotated[Path, typer.Option("--work", help="Folder for checkpoints, target splits and run records (resumable; "
                                       "kept out of the suite).")] = Path("~/.cache/lead/bench-build"),
    config: Annotated[Path | None, typer.Option("--config", help="A build config as YAML (see lead.benchbuild.BuildConfig); "
                                                "default: the committed offline-fewshot suite.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
    debug: DebugOpt = False,
):
    """Build a benchmark suite offline: pre-train, fine-tune, store features.

    Pre-trains the zoo's timm models on Fashion-MNIST (Debian: sudo apt-get install -y dataset-fashion-mnist),
    cuts the few-shot targets, stores every (model, target) feature file as float16 Parquet, and fine-tunes
    every model on every target at every rate and seed of the protocol for the ground truth. Every step is a
    cached Prefect task: an interrupted build resumes where it stopped. The default build takes about an hour
    on 2 CPU cores (see docs/benchmarks.md). Then: lead bench --suite <out>/<name>.yaml --method all.
    """
    _quiet(verbose)
    import yaml

    from lead.errors import InputError

    try:
        cfg = None
        if config is not None:
            try:
                cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as err:
                raise InputError(f"bench build: --config must be a readable YAML file; got {err}.") from err
        from flows.build_benchmark import build_benchmark
        from flows.ephemeral import ensure_api

        ensure_api()  # a temporary Prefect server that ends with this process, if none is configured
        result = build_benchmark(config=cfg, out=str(out), work=str(work), show_progress=sys.stderr.isatty())
    except InputError as err:
        _fail(err, debug, code=2)
    except Exception as err:
        _fail(RuntimeError(f"{type(err).__name__}: {err} (run again with --debug for the traceback)"), debug and err, code=1)
    t = result["timings"]
    typer.echo(f"suite: {result['suite']} ({result['runs']} fine-tuning runs, {t['total_s']:.0f} s: pre-training "
               f"{t['pretraining_s']:.0f} s, features {t['features_s']:.0f} s, fine-tuning {t['finetuning_s']:.0f} s)")
    typer.echo(f"next: lead bench --suite {result['suite']} --method all")


def _bench_history(suite, store, tracking_uri, zoo, metric, as_json, debug) -> None:
    """``lead bench --history``: the track record through the same table as a suite."""
    from lead.errors import InputError

    if suite is not None:
        _fail(InputError("bench: --history and --suite must not be given together; got both. Drop one."), debug, code=2)
    _quiet(False)
    try:
        from flows.bench import track_record

        result = track_record(store=str(store) if store else None, tracking_uri=tracking_uri, zoo=zoo, metric=metric)
    except InputError as err:
        _fail(err, debug, code=2)
    except Exception as err:
        _fail(RuntimeError(f"{type(err).__name__}: {err} (run again with --debug for the traceback)"), debug and err, code=1)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    _print_bench(result)
    console = _console()
    for d, why in result["left_out"].items():
        console.print(f"[yellow]{d} left out[/yellow]: {why}")
    if not result.get("priors"):
        console.print("static priors: pass --zoo to compare with them")
    auto = result["auto"]
    console.print(f"--method auto would rank by {auto['method'] or 'the default methods'}: {auto['reason']}")


def _print_bench(result: dict) -> None:
    import math

    from rich.table import Table

    from flows.bench import below_prior
    from lead.benchmark import mean_by_method
    from lead.scoring.priors import PRIORS

    console = _console()
    priors = [p for p in PRIORS if any(r["method"] == p for r in result["rows"])]
    methods = list(result["methods"]) + priors
    published = result.get("published") or {}
    table = Table(title=f"Weighted tau on suite {result['suite']} (published values in brackets)" if published
                  else f"Weighted tau on suite {result['suite']}", title_justify="left")
    table.add_column("dataset")
    for m in methods:
        table.add_column(m, justify="right")
    tau = {(r["dataset"], r["method"]): r["weighted_tau"] for r in result["rows"]}

    def cell(v, m=None, d=None):
        text = f"{v:.3f}" if isinstance(v, float) and math.isfinite(v) else "n/a"
        return text + (" <" if m and m not in PRIORS and below_prior(result["rows"], m, d) else "")

    for d in result["datasets"]:
        table.add_row(d, *[cell(tau[(d, m)], m, d) + (f" ({published[m][d]:.3f})" if d in published.get(m, {}) else "")
                           for m in methods])
    mean = mean_by_method(result["rows"])
    table.add_row("mean", *[cell(mean[m]) for m in methods], style="bold")
    console.print(table)
    if priors:
        console.print("<: ranks below a static prior on that dataset (prior:params: bigger is better; "
                      "prior:source-accuracy: the model's own pre-training accuracy)")
    for d, err in result["failures"].items():
        console.print(f"[red]{d} not ranked[/red]: {err}")
    console.print(f"table: {result['table_path']}")
    console.print(f"figure: {result['plot_path']}")
    ml = result["mlflow"]
    if ml.get("run_id"):
        console.print(f"MLflow run: {ml['run_id']} in experiment lead-bench/{result['suite']}: {ml['url']}")
    if ml.get("error"):
        console.print(f"[red]MLflow logging failed[/red]: {ml['error']}")


# --- outcomes: real fine-tuned accuracies taken back into the store -----------------------------------

outcomes_app = typer.Typer(
    help=(
        "Real fine-tuned accuracies of the models you picked, recorded in the store (append-only Parquet, DuckDB "
        "view `outcomes`). `lead bench --history` measures every method against them and `lead rank --method auto` "
        "ranks by the best. Values are percentages in [0, 100] unless --unit fraction ([0, 1])."
    ),
    no_args_is_help=True,
)
app.add_typer(outcomes_app, name="outcomes")

UnitOpt = Annotated[str, typer.Option("--unit", help="percent (values in [0, 100], the default) or fraction (values in [0, 1], "
                                      "e.g. val_acc logged by Keras or Lightning).")]
ReplaceOpt = Annotated[bool, typer.Option("--replace", help="Record a value that differs from the one recorded for the same "
                                          "dataset, model and metric (the old one stays in the log). Without it the "
                                          "command refuses.")]


def _report_outcomes(res, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"path": str(res.path) if res.path else None,
                               "written": [vars(o) for o in res.written], "repeats": [vars(o) for o in res.repeats],
                               "replaced": {"/".join(k): v for k, v in res.replaced.items()}, "notes": res.notes}))
        return
    for o in res.written:
        old = res.replaced.get(o.key)
        typer.echo(f"recorded {o.model} on {o.dataset}: {o.metric} = {o.value:g} ({o.unit})"
                   + (f", replacing {old:g}" if old is not None else ""))
    for o in res.repeats:
        typer.echo(f"already recorded {o.model} on {o.dataset}: {o.metric} = {o.value:g} ({o.unit}); not written again")
    for note in res.notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    if res.path:
        typer.echo(f"outcomes file: {res.path}")


@outcomes_app.command("add")
def outcomes_add(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="The dataset's name as ranked (or its fingerprint).")],
    model: Annotated[str, typer.Option("--model", help="The model id as in the zoo and the ranking.")],
    accuracy: Annotated[float, typer.Option("--accuracy", help="The fine-tuned result, in --unit (default percent).")],
    metric: Annotated[str, typer.Option("--metric", help="Name of the metric.")] = "accuracy",
    unit: UnitOpt = "percent",
    note: Annotated[str, typer.Option("--note", help="Free text (protocol, epochs, who).")] = "",
    replace: ReplaceOpt = False,
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was done as JSON.")] = False,
    debug: DebugOpt = False,
):
    """Record the real fine-tuned accuracy of a model on a dataset this store has ranked.

    An identical repeat is reported and not written again; a different value for the same dataset, model
    and metric is refused unless --replace. Example: lead outcomes add --dataset pets --model resnet50 --accuracy 93.1
    """
    from lead.config import Settings
    from lead.errors import InputError
    from lead.trackrecord import Outcome
    from storage.outcomes import record

    try:
        res = record(Settings.from_env(store=store).store,
                     [Outcome(dataset, model, accuracy, metric=metric, unit=unit, note=note, source="cli")],
                     replace=replace, where="outcomes add")
    except InputError as err:
        _fail(err, debug, code=2)
    _report_outcomes(res, as_json)


@outcomes_app.command("import")
def outcomes_import(
    experiment: Annotated[str, typer.Option("--experiment", "-e", help="MLflow experiment of the fine-tuning runs.")],
    metric: Annotated[str, typer.Option("--metric", help="The run metric to import (its last logged value), e.g. val_acc.")],
    unit: UnitOpt = "percent",
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Dataset of every run (default: each run's tag lead.dataset).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model of every run (default: each run's tag lead.model).")] = None,
    filter_string: Annotated[str, typer.Option("--filter", help="MLflow search filter, e.g. \"tags.seed = '0'\" or "
                                               "\"params.lr = '0.01'\".")] = "",
    replace: ReplaceOpt = False,
    store: StoreOpt = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI of the fine-tuning runs. "
                                                     "(env: MLFLOW_TRACKING_URI; default sqlite:///<store>/mlflow.db)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was done as JSON.")] = False,
    debug: DebugOpt = False,
):
    """Import fine-tuned accuracies from finished MLflow runs (one outcome per run).

    Each run's dataset and model come from its tags lead.dataset and lead.model (or --dataset/--model).
    All or nothing: an invalid value, an unknown model or dataset, or two runs giving different values for
    one dataset and model (e.g. several seeds: average them or --filter one) refuses the whole import.
    """
    _quiet(False)
    from lead.config import Settings
    from lead.errors import InputError
    from lead.trackrecord import Outcome
    from storage.outcomes import record
    from storage.tracking import fine_tuning_results

    try:
        settings = Settings.from_env(store=store, tracking_uri=tracking_uri)
        found, skipped = fine_tuning_results(settings.tracking_uri, experiment, metric, dataset=dataset, model=model,
                                             filter_string=filter_string)
        if not found:
            raise InputError(f"outcomes import: experiment {experiment!r} must have finished runs with metric {metric!r} and "
                             f"a dataset and model; got none usable ({len(skipped)} skipped"
                             + (f": {skipped[0]}" if skipped else "") + ").")
        res = record(settings.store, [Outcome(f["dataset"], f["model"], f["value"], metric=metric, unit=unit,
                                              note=f"run {f['run_name']}", source=f"mlflow:{f['run_id']}") for f in found],
                     replace=replace, where="outcomes import")
    except InputError as err:
        _fail(err, debug, code=2)
    for line in skipped:
        typer.secho(f"skipped run {line}", fg=typer.colors.YELLOW, err=True)
    _report_outcomes(res, as_json)


# --- operations: the dataset registry, the watcher, the deployments, set-up and the UIs ------------

datasets_app = typer.Typer(
    help=(
        "The store's dataset registry: the datasets the nightly re-ranking ranks. Registering one also emits the "
        "Prefect event lead.dataset.registered, which the rank-on-new-dataset deployment (`lead serve`) answers "
        "with a ranking."
    ),
    no_args_is_help=True,
)
app.add_typer(datasets_app, name="datasets")


def _registry_errors():
    from lead.errors import InputError

    return (InputError, ConnectionError)


@datasets_app.command("add")
def datasets_add(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name to register it under (a plain name; MLflow experiment lead/<name>).")],
    path: Annotated[str, typer.Argument(metavar="PATH", help="ImageFolder directory (a sub-folder per class), CSV manifest (path,label) "
                                              "or built-in demo set (animal-mnist-fewshot, mnist-5k).")],
    store: StoreOpt = None,
    debug: DebugOpt = False,
):
    """Validate a dataset, record it in the registry and emit the Prefect event lead.dataset.registered.

    The dataset is read and fingerprinted first (a dataset that cannot be ranked is refused). The event goes
    to the Prefect server of PREFECT_API_URL; `lead serve` answers it by ranking the dataset. Without a
    configured server the dataset is only recorded (the nightly re-ranking picks it up).
    """
    _quiet(False)
    from flows.registry import register_dataset

    try:
        reg = register_dataset(path, name, store=store)
    except _registry_errors() as err:
        _fail(err, debug, code=1 if isinstance(err, ConnectionError) else 2)
    e = reg.entry
    typer.echo(f"registered {e.name}: {e.path} ({e.n_samples} images, {e.n_classes} classes, fingerprint {e.fingerprint[:12]})")
    if reg.event_sent_to:
        typer.echo(f"event lead.dataset.registered sent to {reg.event_sent_to}")
    for note in reg.notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)


@datasets_app.command("list")
def datasets_list(
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per dataset.")] = False,
    debug: DebugOpt = False,
):
    """List the registered datasets: name, path, size, fingerprint and when each was registered."""
    from dataclasses import asdict

    from lead.config import Settings
    from lead.errors import InputError
    from storage.registry import list_datasets

    try:
        entries = list_datasets(Settings.from_env(store=store).store)
    except InputError as err:
        _fail(err, debug, code=2)
    if as_json:
        for e in entries:
            typer.echo(json.dumps(asdict(e)))
        return
    if not entries:
        typer.echo("no datasets registered: add one with `lead datasets add NAME PATH`")
        return
    from rich.table import Table

    table = Table()
    for col in ("name", "images", "classes", "fingerprint", "registered", "path"):
        table.add_column(col)
    for e in entries:
        table.add_row(e.name, str(e.n_samples), str(e.n_classes), e.fingerprint[:12], e.registered_at, e.path)
    _console().print(table)


@datasets_app.command("remove")
def datasets_remove(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A registered dataset's name.")],
    store: StoreOpt = None,
    debug: DebugOpt = False,
):
    """Remove a dataset from the registry: the nightly re-ranking stops ranking it. Its rankings, logits and
    MLflow runs are kept."""
    from lead.config import Settings
    from lead.errors import InputError
    from storage.registry import remove_dataset

    try:
        e = remove_dataset(Settings.from_env(store=store).store, name)
    except InputError as err:
        _fail(err, debug, code=2)
    typer.echo(f"removed {e.name} ({e.path}) from the registry; its rankings and MLflow runs are kept")


@app.command()
def watch(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Drop folder: each new sub-folder is one dataset (an ImageFolder).")],
    store: StoreOpt = None,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between two looks at the folder.")] = 5.0,
    settle: Annotated[float, typer.Option("--settle", min=0.0, help="Seconds a sub-folder must stay unchanged before it is registered.")] = 10.0,
    once: Annotated[bool, typer.Option("--once", help="Register what is there and has settled, then exit (for cron).")] = False,
    debug: DebugOpt = False,
):
    """Register each new sub-folder of a drop folder once its contents have stopped changing.

    Every --interval seconds the sub-folders are listed with their file count, size and newest
    modification time; one that has not changed for --settle seconds is registered under its own name,
    as `lead datasets add NAME FOLDER` would (validated, recorded, event lead.dataset.registered emitted).
    Hidden sub-folders (.name) are ignored: write into .name and rename it when done. Stop with Ctrl-C.
    """
    _quiet(False)
    from flows.registry import watch as watch_folder
    from lead.config import Settings

    colours = {"seen": None, "registered": typer.colors.GREEN, "failed": typer.colors.RED}

    def report(kind: str, text: str) -> None:
        typer.secho(f"{kind}: {text}", fg=colours[kind], err=kind == "failed")

    settings = Settings.from_env(store=store)
    typer.echo(f"watching {directory.expanduser().resolve()} (every {interval:g} s, settle {settle:g} s) into the registry "
               f"of {settings.store}" + ("" if once else "; Ctrl-C stops"))
    try:
        done = watch_folder(directory, store=settings.store, interval_s=interval, settle_s=settle, once=once, report=report)
    except _registry_errors() as err:
        _fail(err, debug, code=1 if isinstance(err, ConnectionError) else 2)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if once:
        typer.echo(f"registered {len(done)} dataset(s)")


def _resolve_zoo(zoo: str) -> str:
    """A zoo file as an absolute path (deployment runs may start in another folder); a built-in name as is."""
    p = Path(zoo).expanduser()
    return str(p.resolve()) if p.is_file() else zoo


@app.command()
def serve(
    zoo: Annotated[str, typer.Option("--zoo", "-z", help="Zoo YAML file or built-in zoo that both deployments rank.")] = "efficientnet-lite",
    method: Annotated[str, typer.Option("--method", "-m", help=METHOD_HELP)] = _DEFAULT_METHOD,
    store: StoreOpt = None,
    cron: Annotated[str, typer.Option("--cron", help="Schedule of the nightly re-ranking (cron expression).")] = "0 2 * * *",
    timezone: Annotated[str, typer.Option("--timezone", help="Time zone of --cron (IANA name).")] = "UTC",
    limit: Annotated[int, typer.Option("--limit", min=1, help="Flow runs at once in this process.")] = 1,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N. (env: LEAD_DEVICE)")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI. (env: MLFLOW_TRACKING_URI)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's debug logs.")] = False,
    debug: DebugOpt = False,
):
    """Serve the two deployments from this process, on a single machine: the nightly re-ranking on a cron
    schedule and the ranking of each newly registered dataset.

    nightly-rerank/nightly-rerank re-ranks every registered dataset against the zoo (default 02:00 UTC;
    cached extractions are not repeated). rank-zoo/rank-on-new-dataset ranks a dataset when the event
    lead.dataset.registered arrives (`lead datasets add`, `lead watch`). Needs a Prefect server
    (PREFECT_API_URL; `lead ui` starts one). Runs until Ctrl-C.
    """
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "DEBUG" if verbose else "INFO")
    _quiet(verbose)
    from flows.deployments import build_deployments
    from flows.rank_zoo import parse_methods
    from flows.registry import check_server
    from lead.config import Settings
    from lead.errors import InputError
    from lead.zoo import load_zoo

    try:
        from flows.deployments import check_cron

        settings = Settings.from_env(store=store)
        load_zoo(zoo)
        methods = method.strip() if method.strip() in ("default", "auto") else parse_methods(method)  # resolved per run
        check_cron(cron, timezone)
        url = check_server("serve")
        deployments = build_deployments(zoo=_resolve_zoo(zoo), methods=methods, store=str(settings.store), cron=cron,
                                        timezone=timezone, tracking_uri=tracking_uri, device=device)
    except (InputError, ConnectionError) as err:
        _fail(err, debug, code=1 if isinstance(err, ConnectionError) else 2)
    typer.echo(f"serving on {url}: nightly-rerank/nightly-rerank ({cron}, {timezone}) and rank-zoo/rank-on-new-dataset "
               f"(on lead.dataset.registered); store {settings.store}, zoo {zoo}, methods {methods if isinstance(methods, str) else ','.join(methods)}")
    from prefect import serve as prefect_serve

    from flows import EXIT_WITH_ENV

    os.environ[EXIT_WITH_ENV] = str(os.getpid())  # the flow-run processes end with this one (flows/__init__.py)
    try:
        prefect_serve(*deployments, limit=limit)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def setup(
    gpus: Annotated[int | None, typer.Option("--gpus", min=1, help="Slots of the concurrency limit gpu (default: the GPUs "
                                                                   "torch sees, or 1 on CPU).")] = None,
    pool: Annotated[str, typer.Option("--pool", help="Name of the process work pool that deploy/prefect.yaml names.")] = "lead",
    debug: DebugOpt = False,
):
    """Prepare a Prefect server for lead: the global concurrency limit `gpu` and the work pool.

    The limit `gpu` gets one slot per GPU (1 on a CPU-only machine): every extraction holds a slot during
    its forward pass, so no device runs two at once. The process work pool `lead` is where the deployments
    of deploy/prefect.yaml run (`prefect worker start --pool lead`). Running it again updates the limit and
    keeps an existing pool. Needs PREFECT_API_URL.
    """
    _quiet(False)
    from flows.registry import check_server
    from lead.errors import InputError

    try:
        url = check_server("setup")
        slots = gpus or _gpu_count()
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.exceptions import ObjectNotFound
        from prefect.workers.process import ProcessWorker

        from tasks.extract import GPU_LIMIT

        with get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name(GPU_LIMIT, slots)
            try:
                existing = client.read_work_pool(pool)
            except ObjectNotFound:
                existing = None
            if existing is None:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process",
                                                       base_job_template=ProcessWorker.get_default_base_job_template()))
    except (InputError, ConnectionError) as err:
        _fail(err, debug, code=1 if isinstance(err, ConnectionError) else 2)
    typer.echo(f"{url}: concurrency limit {GPU_LIMIT!r} = {slots} slot{'s' if slots != 1 else ''}")
    if existing is None:
        typer.echo(f"{url}: work pool {pool!r} created (type process); start a worker with: prefect worker start --pool {pool}")
    else:
        typer.echo(f"{url}: work pool {pool!r} already there (type {existing.type}); kept as it is")


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


@app.command()
def ui(
    store: StoreOpt = None,
    prefect_port: Annotated[int, typer.Option("--prefect-port", min=1, max=65535, help="Port of the Prefect server.")] = 4200,
    mlflow_port: Annotated[int, typer.Option("--mlflow-port", min=1, max=65535, help="Port of the MLflow UI.")] = 5000,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI. (env: MLFLOW_TRACKING_URI; "
                                                                            "default sqlite:///<store>/mlflow.db)")] = None,
    debug: DebugOpt = False,
):
    """Start the Prefect server and the MLflow UI on 127.0.0.1 and print their addresses.

    The Prefect server (flow runs, deployments, schedules, events) is the one `lead serve`, `lead setup` and
    `lead datasets add` talk to once PREFECT_API_URL points at it. The MLflow UI shows the store's tracking
    database: one experiment lead/<dataset> per dataset; search runs with tags.dataset = '...' or
    tags.best_model = '...'. Both stop on Ctrl-C.
    """
    from flows.ui import UIError, run_uis
    from lead.config import Settings

    settings = Settings.from_env(store=store, tracking_uri=tracking_uri)
    try:
        run_uis(settings.tracking_uri, prefect_port=prefect_port, mlflow_port=mlflow_port, echo=typer.echo)
    except UIError as err:
        _fail(err, debug, code=2 if err.input_error else 1)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


if __name__ == "__main__":
    app()
