"""Operations: the dataset registry (``lead datasets``), the drop-folder watcher (``lead watch``), the
deployments (``lead serve``), the Prefect set-up (``lead setup``) and the UIs (``lead ui``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

import lead.datasets

from flows.cli.common import _DEFAULT_METHOD, METHOD_HELP, DebugOpt, StoreOpt, _console, _quiet, app, exits

datasets_app = typer.Typer(
    help=(
        "The store's dataset registry: the datasets the nightly re-ranking ranks. Registering one also emits the "
        "Prefect event lead.dataset.registered, which the rank-on-new-dataset deployment (`lead serve`) answers "
        "with a ranking."
    ),
    no_args_is_help=True,
)
app.add_typer(datasets_app, name="datasets")


@datasets_app.command("add")
def datasets_add(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name to register it under (a plain name; MLflow experiment lead/<name>).")],
    path: Annotated[str, typer.Argument(metavar="PATH", help=f"The dataset: {lead.datasets.usages()}.")],
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

    with exits(debug):
        reg = register_dataset(path, name, store=store)
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
    from storage.registry import list_datasets

    with exits(debug):
        entries = list_datasets(Settings.from_env(store=store).store)
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
    from storage.registry import remove_dataset

    with exits(debug):
        e = remove_dataset(Settings.from_env(store=store).store, name)
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
    with exits(debug):
        done = watch_folder(directory, store=settings.store, interval_s=interval, settle_s=settle, once=once, report=report)
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
    from lead.zoo import load_zoo

    with exits(debug):
        from flows.deployments import check_cron

        settings = Settings.from_env(store=store)
        load_zoo(zoo)
        methods = method.strip() if method.strip() in ("default", "auto") else parse_methods(method)  # resolved per run
        check_cron(cron, timezone)
        url = check_server("serve")
        deployments = build_deployments(zoo=_resolve_zoo(zoo), methods=methods, store=str(settings.store), cron=cron,
                                        timezone=timezone, tracking_uri=tracking_uri, device=device)
    typer.echo(f"serving on {url}: nightly-rerank/nightly-rerank ({cron}, {timezone}) and rank-zoo/rank-on-new-dataset "
               f"(on lead.dataset.registered); store {settings.store}, zoo {zoo}, methods {methods if isinstance(methods, str) else ','.join(methods)}")
    from prefect import serve as prefect_serve

    from flows import EXIT_WITH_ENV

    os.environ[EXIT_WITH_ENV] = str(os.getpid())  # the flow-run processes end with this one (flows/__init__.py)
    with exits(debug):
        prefect_serve(*deployments, limit=limit)


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

    with exits(debug):
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
    with exits(debug):
        run_uis(settings.tracking_uri, prefect_port=prefect_port, mlflow_port=mlflow_port, echo=typer.echo)
