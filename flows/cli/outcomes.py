"""``lead outcomes add`` and ``lead outcomes import``: real fine-tuned accuracies taken back into the store."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from flows.cli.common import DebugOpt, StoreOpt, _quiet, app, exits

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
    from lead.trackrecord import Outcome
    from storage.outcomes import record

    with exits(debug):
        res = record(Settings.from_env(store=store).store,
                     [Outcome(dataset, model, accuracy, metric=metric, unit=unit, note=note, source="cli")],
                     replace=replace, where="outcomes add")
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

    with exits(debug):
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
    for line in skipped:
        typer.secho(f"skipped run {line}", fg=typer.colors.YELLOW, err=True)
    _report_outcomes(res, as_json)
