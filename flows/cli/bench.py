"""``lead bench``, ``lead bench --history`` and ``lead bench build``: scores against real fine-tuned accuracies."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import _DEFAULT_METHOD, METHOD_HELP, DebugOpt, StoreOpt, _console, _fail, _quiet, app, exits

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

    with exits(debug):
        load_suite(suite)
        from flows.rank_zoo import parse_methods

        methods = parse_methods(method)
        from flows.bench import bench as bench_flow
        from flows.ephemeral import ensure_api

        ensure_api()  # a temporary Prefect server that ends with this process, if none is configured
        result = bench_flow(suite=suite, methods=methods, store=str(store) if store else None, tracking_uri=tracking_uri,
                            device=device, show_progress=not as_json and sys.stderr.isatty())
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

    with exits(debug):
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
    with exits(debug):
        from flows.bench import track_record

        result = track_record(store=str(store) if store else None, tracking_uri=tracking_uri, zoo=zoo, metric=metric)
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
