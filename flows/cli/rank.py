"""``lead rank``: plan (the preflight), run the ``rank-zoo`` flow, render the :class:`lead.selection.Selection`."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer

import lead.datasets
import lead.weights

from flows.cli.common import _DEFAULT_METHOD, METHOD_HELP, DebugOpt, StoreOpt, _console, _quiet, app, fail_for
from flows.cli.interrupts import _cancel_on_interrupt, _interrupted, _run_flow


def _print_selection(sel) -> None:
    """Render a :class:`lead.selection.Selection`: the table, then what a reader must know about it."""
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    methods, primary = sel.methods, sel.primary_method
    n_models = len(sel.models)
    table = Table(
        title=f"Ranking of {n_models} model{'s' if n_models != 1 else ''} on {sel.dataset} "
        f"({sel.n_samples} images, {sel.n_classes} classes), by {primary}",
        title_justify="left",
    )
    boot = any(primary in m.uncertainty for m in sel.models)
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
    from lead.placement import where_text

    for m in sel.models:
        extraction = m.extraction.status if m.extraction else "-"
        where = where_text(m.extraction.worker, m.extraction.device) if m.extraction else ""
        if m.extraction and m.extraction.status == "extracted":
            extraction += f" ({m.extraction.seconds:.1f} s{', ' + where if where else ''})"
        elif where:  # cached: where the file was made
            extraction += f" ({where})"
        u, rank = m.uncertainty.get(primary, {}), m.ranks.get(primary)
        cells = []
        for k in methods:
            cells.append(f"{m.scores[k]:.4f}" if k in m.scores else "-")
            if k == primary and boot:
                cells.append(f"{u['p_best']:.2f}" if "p_best" in u else "-")
        status = "ok" if m.ok else m.error if m.status == "excluded" else \
            f"failed: {m.error[:150]}{'...' if len(m.error) > 150 else ''}"
        table.add_row(
            f"{'≈' if u.get('tied_with_best') and rank != 1 else ''}{rank}" if rank is not None else "-",
            m.model,
            *cells,
            f"{m.cost['params'] / 1e6:.1f} M" if m.cost.get("params") else "-",
            f"{m.cost['gflops']:.3f}" if m.cost.get("gflops") else "-",
            extraction,
            status,
        )
    console.print(table)
    _print_uncertainty_notes(console, sel, boot)
    _print_method_notes(console, sel)
    tied = sel.best_models
    best = f"tie between {', '.join(tied[:-1])} and {tied[-1]}" if len(tied) > 1 else sel.best_model or "none"
    console.print(f"best model: [bold]{escape(best)}[/bold]   ({sel.seconds:.1f} s)")
    _print_selection_notes(console, sel)


def _print_uncertainty_notes(console, sel, boot: bool) -> None:
    """What P(best) and ``≈`` mean here, the Pareto front, and methods with fewer resamples or none."""
    from rich.markup import escape

    primary = sel.primary_method
    if boot:
        tied = [m.model for m in sel.models if m.uncertainty.get(primary, {}).get("tied_with_best") and m.ranks.get(primary) != 1]
        console.print(f"P(best): share of {sel.bootstrap['resamples']} paired resamples of the images in which the model "
                      f"scores highest by {primary}" + (f"; ≈ tied with the best (its 90% rank interval reaches 1): "
                                                       f"{', '.join(tied)}" if tied else ""))
    front = [m.model for m in sel.models if m.pareto.get(primary)]
    if front and any(m.cost.get("gflops") for m in sel.models):
        console.print(f"Pareto front ({primary} against GFLOPs): {', '.join(front)}")
    for note in (sel.bootstrap or {}).get("notes", {}).values():
        console.print(f"[yellow]bootstrap[/yellow]: {escape(note)}")


def _print_method_notes(console, sel) -> None:
    """Methods that could not score some models, methods that do not tell the models apart, ``auto``."""
    for method in sel.methods:
        failed = {m.model: m.method_errors[method] for m in sel.models if method in m.method_errors and m.ok}
        if failed:
            reasons = sorted(set(failed.values()))
            console.print(f"[yellow]{method} not computed for {len(failed)} model(s)[/yellow] ({', '.join(failed)}): "
                          f"{reasons[0]}{f' (and {len(reasons) - 1} other reasons)' if len(reasons) > 1 else ''}")
    for method in sel.methods:
        ranks = [m.ranks[method] for m in sel.models if method in m.ranks]
        if len(ranks) > 1 and len(set(ranks)) == 1:
            console.print(f"[yellow]{method} gives every model the same score[/yellow]: it does not tell them apart here.")
    if sel.auto:
        console.print(f"method auto: ranked by [bold]{sel.primary_method}[/bold]: {sel.auto['reason']}")


def _print_selection_notes(console, sel) -> None:
    """Dropped methods, the fallback, dataset notes, warnings, skipped images, where it was recorded."""
    from rich.markup import escape

    for method, why in sel.dropped_methods.items():
        console.print(f"[yellow]{method} left out of the default methods[/yellow]: it {why}")
    if sel.fallback:
        console.print(f"[yellow]{sel.fallback}[/yellow]")
    for note in sel.dataset_notes:
        console.print(f"[yellow]dataset[/yellow]: {note}")
    for warning in sel.warnings:
        console.print(f"[yellow]warning[/yellow]: {escape(warning)}")
    if sel.skipped_images:
        shown = ", ".join(f"{x['sample_id']} ({x['error']})" for x in sel.skipped_images[:10])
        more = f" and {len(sel.skipped_images) - 10} more" if len(sel.skipped_images) > 10 else ""
        console.print(f"[yellow]skipped {len(sel.skipped_images)} unreadable images[/yellow]: {shown}{more}")
    console.print(f"rankings table: {sel.rankings_path}")
    ml = sel.mlflow
    if ml.run_id:
        console.print(f"MLflow run: {ml.run_id} in experiment lead/{sel.dataset} ({ml.tracking_uri})")
        console.print(f"open it with: {ml.ui_command}  then {ml.url}")
        if ml.runs_url:
            console.print(f"runs table (scores, P(best), cost as columns): {ml.runs_url}")
    if ml.error:
        console.print(f"[red]MLflow logging failed[/red]: {ml.error} (the ranking is in the rankings table)")


# the options of `lead rank` beyond the common ones
ExecutorOpt = Annotated[str | None, typer.Option("--executor", help="Where the tasks run: threads (of this process) or "
    "dask (a local Dask cluster of worker processes, one per GPU, else --max-workers; or the cluster at "
    "DASK_SCHEDULER_ADDRESS). (env: LEAD_EXECUTOR; default threads)")]
AutoMinDatasetsOpt = Annotated[int | None, typer.Option("--auto-min-datasets", min=1, help="With --method auto: "
    "datasets of track record a method needs before auto ranks by it. (env: LEAD_AUTO_MIN_DATASETS; "
    "default 3)")]
BootstrapOpt = Annotated[int | None, typer.Option("--bootstrap", min=0, help="Paired bootstrap resamples of the images "
    "for P(best) and the 90% rank intervals; 0 turns it off. (env: LEAD_BOOTSTRAP; default 200)")]
BootstrapSeedOpt = Annotated[int | None, typer.Option("--bootstrap-seed", min=0, help="Seed of the resamples. "
    "(env: LEAD_BOOTSTRAP_SEED; default 0)")]
BootstrapBudgetOpt = Annotated[float | None, typer.Option("--bootstrap-budget", min=0.001, help="Seconds a score that is "
    "recomputed on each resample (LogME, H-score, GBC, TransRate) may spend per model; fewer "
    "resamples, or none (said so), when slower. (env: LEAD_BOOTSTRAP_BUDGET; default 5)")]
MaxParamsOpt = Annotated[float | None, typer.Option("--max-params", min=1, help="Leave out models with more parameters "
    "(recorded as excluded, with the reason).")]
MaxGflopsOpt = Annotated[float | None, typer.Option("--max-gflops", min=0.0, help="Leave out models needing more GFLOPs "
    "per image at their input size (recorded as excluded).")]


@app.command()
def rank(
    dataset: Annotated[
        str,
        typer.Option("--dataset", "-d", help=f"The dataset: {lead.datasets.usages()}."),
    ],
    zoo: Annotated[
        str,
        typer.Option("--zoo", "-z", help="Zoo YAML file (name, arch, weights, input_size, mean, std per model) or a "
                     f"built-in zoo: efficientnet-lite. Weights: {lead.weights.usages()}."),
    ],
    method: Annotated[
        str, typer.Option("--method", "-m", help=METHOD_HELP)
    ] = _DEFAULT_METHOD,
    store: StoreOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="Dataset name to record (default: folder or file name).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N. (env: LEAD_DEVICE)")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Images per forward pass. (env: LEAD_BATCH_SIZE; default 64)")] = None,
    max_workers: Annotated[int | None, typer.Option("--max-workers", min=1, help="Models extracted at once. (env: LEAD_MAX_WORKERS; default: GPUs, or 2)")] = None,
    executor: ExecutorOpt = None,
    num_workers: Annotated[int | None, typer.Option("--num-workers", min=0, help="DataLoader processes decoding images per model. (env: LEAD_NUM_WORKERS; default: chosen per model: none when decoding the images takes less time than starting workers, else 1 on CPU, cores // GPUs - 1 on a GPU)")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI. (env: MLFLOW_TRACKING_URI; default sqlite:///<store>/mlflow.db)")] = None,
    auto_min_datasets: AutoMinDatasetsOpt = None,
    bootstrap: BootstrapOpt = None,
    bootstrap_seed: BootstrapSeedOpt = None,
    bootstrap_budget: BootstrapBudgetOpt = None,
    max_params: MaxParamsOpt = None,
    max_gflops: MaxGflopsOpt = None,
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
    restore = lambda: None  # noqa: E731 - the signal handlers to put back
    try:
        # Plan before a flow run starts (dataset, zoo, methods, settings), so mistakes cost a second, not a
        # server start; the flow gets the plan's values.
        from flows.rank_zoo import rank_zoo
        from flows.runners import task_runner

        plan = _plan(dataset, zoo, method, name, device=device, executor=executor, max_params=max_params,
                     max_gflops=max_gflops, store=store, tracking_uri=tracking_uri, batch_size=batch_size,
                     max_workers=max_workers, num_workers=num_workers, auto_min_datasets=auto_min_datasets,
                     bootstrap=bootstrap, bootstrap_seed=bootstrap_seed, bootstrap_budget=bootstrap_budget)
        settings = plan.settings
        flow = rank_zoo.with_options(task_runner=task_runner(settings))
        restore = _cancel_on_interrupt()
        from flows.ephemeral import ensure_api

        # a temporary Prefect server that ends with this process, if none is configured; while it starts,
        # this process imports what the flow's recording will need (MLflow's store)
        ensure_api(while_starting=lambda: _import_recording(settings.tracking_uri))
        sel = _run_flow(flow, **_flow_params(plan, method, show_progress=not as_json and sys.stderr.isatty() or verbose),
                        max_params=max_params, max_gflops=max_gflops)
        restore()
    except BaseException as err:
        from lead.extract import CANCEL

        if CANCEL.is_set() or isinstance(err, KeyboardInterrupt):  # the failures are the interruption
            _interrupted()
        restore()
        if not isinstance(err, Exception):
            raise
        fail_for(err, debug)
    from lead.extract import CANCEL

    if CANCEL.is_set():  # interrupted after some models finished: not a complete ranking
        _interrupted()
    if as_json:
        typer.echo(json.dumps(sel.to_dict(), indent=2, default=str))
    else:
        _print_selection(sel)


def _import_recording(tracking_uri: str) -> None:
    """Import MLflow's client (and its SQLAlchemy store for a ``sqlite:`` URI), which every ranking's record
    needs (storage.tracking): about 2 s of CPU that then overlaps the temporary Prefect server's start
    instead of following it. Not matplotlib: a ranking that shows what an earlier one showed draws nothing
    (storage.figures.write_selection_figure), and one that draws imports it then."""
    import mlflow.tracking  # noqa: F401

    if tracking_uri.startswith("sqlite:"):
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401


def _plan(dataset: str, zoo: str, method: str, name: str | None, *, device: str | None, executor: str | None,
          max_params: float | None, max_gflops: float | None, **flags):
    """The settings (environment, then the flags), the deploy limits checked, and the ranking's plan."""
    from flows.rank_zoo import plan_for_store
    from lead.config import Settings
    from lead.cost import ModelCost, check_limits
    from lead.extract import select_device

    settings = Settings.from_env(**flags, executor=executor.strip().lower() if executor else None,
                                 **({"device": device} if device else {}))
    check_limits(ModelCost(0, 0, (1, 1)), max_params=max_params, max_gflops=max_gflops)
    plan = plan_for_store(dataset, zoo, method, settings, dataset_name=name)
    select_device(settings.device)
    return plan


def _flow_params(plan, method: str, show_progress: bool) -> dict:
    """The ``rank-zoo`` parameters from a plan: its dataset reference (the flow does not hash the images
    again) and its resolved settings; ``--method`` as given, so the flow records how ``auto`` chose."""
    s = plan.settings
    return {"dataset": plan.dataset, "zoo": plan.zoo, "methods": method, "store": str(s.store),
            "tracking_uri": s.tracking_uri, "dataset_name": plan.dataset.name, "device": s.device,
            "batch_size": s.batch_size, "num_workers": s.num_workers, "show_progress": show_progress,
            "auto_min_datasets": s.auto_min_datasets, "bootstrap": s.bootstrap, "bootstrap_seed": s.bootstrap_seed,
            "bootstrap_budget": s.bootstrap_budget}
