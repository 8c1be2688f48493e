"""What every ``lead`` command shares: the Typer app, the common options, the console, and the one
mapping from errors to exit statuses (:func:`fail_for`, :func:`exits`).

Exit statuses: 0 done; 1 a failure that is not the input's fault (no model could be scored, a model that
cannot load, a server that cannot be reached, anything unexpected: one line that says to run again with
``--debug``); 2 the input is wrong (a dataset, a zoo file, a method name, an option; ``InputError``, a
DuckDB query error of ``lead history --sql``, a busy port); 130 Ctrl-C; 128 + N after signal N during a
ranking. ``--debug`` shows the full traceback instead of the one line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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

from lead.scoring import DEFAULT_METHODS  # noqa: E402, F401  (light: numpy and scipy only)

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


def exit_status(err: BaseException) -> int | None:
    """The exit status of an error (see the module docstring), or None for an unexpected one."""
    from lead.errors import InputError, ModelLoadError, ScoreError

    if isinstance(err, InputError):
        return 2
    duckdb = sys.modules.get("duckdb")
    if duckdb is not None and isinstance(err, duckdb.Error):
        return 2
    if "flows.ui" in sys.modules and isinstance(err, sys.modules["flows.ui"].UIError):
        return 2 if err.input_error else 1
    if isinstance(err, (ConnectionError, ModelLoadError, ScoreError)):
        return 1
    return None


def fail_for(err: Exception, debug) -> None:
    """Exit for ``err`` by :func:`exit_status`: its one line, or for an unexpected error its type, message
    and the hint to run again with ``--debug`` (with ``debug``, the traceback)."""
    status = exit_status(err)
    if status is None:
        _fail(RuntimeError(f"{type(err).__name__}: {err} (run again with --debug for the traceback)"), debug and err, code=1)
    _fail(err, debug, code=status)


@contextmanager
def exits(debug) -> Iterator[None]:
    """Run a command's body: an error leaves by :func:`fail_for`, Ctrl-C with status 130; Typer's own exits
    pass through."""
    import click

    try:
        yield
    except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
        raise
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as err:
        fail_for(err, debug)


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


def _console():
    """A rich console; when output is not a terminal, wide enough that tables are not truncated."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200, soft_wrap=True)
