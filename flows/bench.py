"""The ``bench`` flow: rank every dataset of a suite with every method, through the same ``rank-zoo``
flow, and measure each method against the suite's real fine-tuned accuracies.

Reports weighted tau (and Kendall tau, Spearman rho, top-1 hit, regret) per method per dataset and the
mean per method, as a Parquet table, a PNG figure (score against accuracy, a panel per dataset and
method), and one MLflow run in experiment ``lead-bench/<suite>`` (metrics ``tau.<method>.<dataset>``,
``mean_tau.<method>``; the figure and the table as artifacts). A dataset that cannot be ranked is
reported, not fatal.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from flows.rank_zoo import artifact_key, parse_methods, rank_zoo
from lead.benchmark import STATISTICS, Suite, evaluate, load_suite, mean_by_method
from lead.config import Settings
from lead.errors import error_text
from lead.scoring.priors import PRIORS, prior_scores
from lead.trackrecord import MIN_MODELS, choose_method, history_suite
from lead.scoring.ranking import plan_methods, rank_scores
from lead.zoo import load_zoo
from storage.bench import bench_dir, plot_scores, write_bench_table
from storage.store import Store
from storage.tracking import RunRecord, Tracker, run_url
from tasks.score import score_model

LOG = logging.getLogger("lead.bench")


def below_prior(rows: list[dict], method: str, dataset: str) -> bool:
    """Whether ``method`` ranks ``dataset`` worse (lower weighted tau) than a static prior does."""
    tau = {r["method"]: r["weighted_tau"] for r in rows if r["dataset"] == dataset}
    mine = tau.get(method, math.nan)
    return any(math.isfinite(tau.get(p, math.nan)) and math.isfinite(mine) and mine < tau[p] for p in PRIORS)


def markdown_table(rows: list[dict], methods: list[str], datasets: list[str], published: dict | None = None) -> str:
    """Weighted tau per dataset (rows) and method (columns), with the mean; published values in brackets;
    the static priors (``prior:*``) as columns, and ``<`` after a method's value where a prior ranks better."""
    tau = {(r["dataset"], r["method"]): r["weighted_tau"] for r in rows}
    mean = mean_by_method(rows)
    priors = [p for p in PRIORS if any(r["method"] == p for r in rows)]
    methods = [m for m in methods if m not in priors] + priors

    def cell(v, method=None, dataset=None):
        text = f"{v:.3f}" if isinstance(v, float) and math.isfinite(v) else "n/a"
        return text + (" <" if method and method not in PRIORS and below_prior(rows, method, dataset) else "")

    def pub(method, dataset):
        v = (published or {}).get(method, {}).get(dataset)
        return f" ({v:.3f})" if v is not None else ""

    lines = ["| dataset | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for d in datasets:
        lines.append(f"| {d} | " + " | ".join(cell(tau.get((d, m), math.nan), m, d) + pub(m, d) for m in methods) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{cell(mean.get(m, math.nan))}**" for m in methods) + " |")
    if priors:
        lines += ["", "`<`: below a static prior on that dataset (prior:params = bigger is better, "
                  "prior:source-accuracy = the model's own pre-training accuracy)."]
    return "\n".join(lines)


def read_metadata_rows(files: dict[str, Path]) -> list:
    """The sample ids of the first stored file (every model of a dataset has the same samples)."""
    import pyarrow.parquet as pq

    return pq.read_table(next(iter(files.values())), columns=["sample_id"]).column("sample_id").to_pylist()


def score_stored(files: dict[str, Path], methods: list[str]) -> dict[str, dict[str, float]]:
    """Score stored feature files with the ``score-model`` task (cached like a ranking's scores).

    Returns ``{method: {model: score}}``; a method that fails on a model leaves that model out."""
    out: dict[str, dict[str, float]] = {m: {} for m in methods}
    for model, path in files.items():
        res = score_model(model, str(Path(path).parent), Path(path).name, methods)
        for m in methods:
            if "score" in res[m]:
                out[m][model] = res[m]["score"]
    return out


def zoo_specs(zoo: str, logger=None) -> dict:
    """``{model: zoo entry}`` of ``zoo`` for the static priors; empty (with a warning) when it cannot be read."""
    if not zoo:
        return {}
    try:
        return {spec.name: spec for spec in load_zoo(zoo)}
    except Exception as err:  # the priors are reference rows; a zoo that cannot be read only loses them
        (logger or LOG).warning("static priors left out: %s", err)
        return {}


def evaluate_scores(
    s: Suite,
    scores: dict[str, dict[str, dict[str, float]]],
    method_ids: list[str],
    settings: Settings,
    specs: dict | None = None,
    failures: dict[str, str] | None = None,
    experiment: str | None = None,
    tags: dict[str, str] | None = None,
    logger=None,
) -> dict:
    """Evaluate already-computed scores against a suite's accuracies, as ``lead bench`` reports them.

    Adds the static priors (from ``specs``, model -> zoo entry), computes the rank statistics
    (:func:`lead.benchmark.evaluate`), writes the Parquet table and the figure under
    ``<store>/bench/suite=<name>/``, the markdown table, and one MLflow run in ``experiment`` (default
    ``lead-bench/<suite>``) with metrics ``tau.<method>.<dataset>`` and ``mean_tau.<method>``.

    Args:
        scores: ``scores[dataset][method][model]``; a dataset that could not be scored is absent (its
            reason in ``failures``). Extended in place with the priors' scores.
        method_ids: the methods, in report order (the priors are appended).
        tags: extra tags of the MLflow run.
    Returns:
        JSON-able dict: ``run_id``, ``suite``, ``methods``, ``datasets``, ``rows``, ``statistics``,
        ``mean_weighted_tau``, ``failures``, ``scores``, ``table_path``, ``plot_path``, ``markdown``,
        ``mlflow`` (``tracking_uri``, and ``experiment_id``, ``run_id``, ``url`` or ``error``), ``published``.
        A tracking failure is reported in ``mlflow["error"]``, never raised.
    """
    logger = logger or LOG
    failures = dict(failures or {})
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    for name in scores if specs else ():  # the static priors, as reference rows (none without a zoo)
        for prior, values in prior_scores(list(s.accuracies[name]), specs).items():
            scores[name][prior] = {k: v for k, v in values.items() if math.isfinite(v)}
    priors = [p for p in PRIORS if any(p in v for v in scores.values())]
    rows = evaluate(s, scores, method_ids + priors)
    for r in rows:
        if r["dataset"] in failures:
            r["note"] = failures[r["dataset"]][:500]
    mean = mean_by_method(rows)
    created_at = datetime.now(UTC)
    table_path = write_bench_table(settings.store, s.name, run_id, created_at, rows)
    plot_path = plot_scores(bench_dir(settings.store, s.name) / f"run={run_id}.png", scores, s.accuracies, rows, method_ids, s.unit)
    md = markdown_table(rows, method_ids, list(s.datasets), s.published)

    mlflow_info: dict = {"tracking_uri": settings.tracking_uri}
    try:
        tracker = Tracker(settings.tracking_uri, artifact_root=Store.of(settings.store).mlflow_artifacts)
        exp = tracker.ensure_experiment(experiment or f"lead-bench/{s.name}")
        parent = tracker.start_parent(exp, run_name=f"bench-{s.name}-{run_id}", tags={"suite": s.name, "lead_run_id": run_id})
        metrics = {f"tau.{r['method']}.{r['dataset']}": r["weighted_tau"] for r in rows if math.isfinite(r["weighted_tau"])}
        metrics.update({f"mean_tau.{m}": v for m, v in mean.items() if math.isfinite(v)})
        best = max((m for m in method_ids if math.isfinite(mean.get(m, math.nan))), key=lambda m: mean[m], default="")
        tracker.log_selection(
            exp, parent,
            RunRecord(s.name, {"best_method": best, "failed_datasets": ",".join(failures),
                               **(tags or {})},
                      {"methods": ",".join(method_ids), "datasets": ",".join(s.datasets), "suite_file": str(s.path)}, metrics),
            [],
            artifact={"rows": rows, "mean_weighted_tau": mean, "failures": failures, "scores": scores},
        )
        tracker.log_artifacts(parent, [plot_path, table_path], {"weighted_tau.md": md})
        mlflow_info.update(experiment_id=exp, run_id=parent, url=run_url(settings.tracking_uri, exp, parent))
    except Exception as err:
        logger.error("MLflow logging of the bench run failed: %s", err)
        mlflow_info["error"] = error_text(err)
    return {
        "run_id": run_id, "suite": s.name, "methods": method_ids, "datasets": list(s.datasets), "rows": rows,
        "statistics": list(STATISTICS), "mean_weighted_tau": mean, "failures": failures, "scores": scores,
        "table_path": str(table_path), "plot_path": str(plot_path), "markdown": md, "mlflow": mlflow_info,
        "published": s.published,
    }


#: MLflow experiment of the track record (``lead bench --history`` and the nightly run).
TRACK_RECORD_EXPERIMENT = "lead-track-record"


def track_record(store: str | None = None, tracking_uri: str | None = None, zoo: str | None = None,
                 metric: str | None = None, min_models: int = MIN_MODELS) -> dict:
    """The store's track record, evaluated and reported like a suite (``lead bench --history``).

    Each dataset's latest selection (its scores per model and method, ``storage.history.latest_scores``)
    is compared with the current outcomes (``storage.outcomes``) on every dataset with outcomes for at
    least ``min_models`` scored models (:func:`lead.trackrecord.history_suite`), through
    :func:`evaluate_scores`: the same rows, table, figure and markdown as ``lead bench --suite``, logged
    as one MLflow run in experiment :data:`TRACK_RECORD_EXPERIMENT` with the tag
    ``outcomes_digest``.

    Args:
        zoo: zoo file or built-in name giving the static priors (None: no priors).
        metric: judge every dataset on this outcome metric (None: per dataset, the most recorded one).
    Returns:
        :func:`evaluate_scores`'s dict, plus ``left_out`` ({dataset: why}), ``outcomes_digest``,
        ``selection_runs`` ({dataset: run id}), ``priors`` (the prior rows present) and ``auto`` (what
        ``--method auto`` would choose: :meth:`lead.trackrecord.AutoChoice.evidence`).
    Raises:
        InputError: no dataset has outcomes for ``min_models`` scored models (the message says what
            the store holds and how to record outcomes).
    """
    from lead.errors import InputError
    from lead.scoring import DEFAULT_METHODS, METHODS
    from storage.history import latest_scores
    from storage.outcomes import current_accuracies, digest

    settings = Settings.from_env(store=store, tracking_uri=tracking_uri)
    scores, runs, methods = latest_scores(settings.store)
    outcomes = current_accuracies(settings.store)
    suite, left_out = history_suite(scores, outcomes, zoo=zoo or "", min_models=min_models, metric=metric)
    if suite is None:
        held = "; ".join(f"{d}: {why}" for d, why in left_out.items()) or "no outcomes"
        raise InputError(f"bench --history: the track record must have a dataset with outcomes for at least {min_models} "
                         f"models its latest selection scored; got {held}. Record them with `lead outcomes add` or "
                         "`lead outcomes import`.")
    sub = {d: {m: dict(v) for m, v in scores[d].items()} for d in suite.datasets}
    methods = [m for m in methods if any(m in v for v in sub.values())]
    selections = {d: runs[d] for d in suite.datasets}
    out_digest = digest(settings.store)
    result = evaluate_scores(suite, sub, methods, settings=settings, specs=zoo_specs(zoo or ""),
                             experiment=TRACK_RECORD_EXPERIMENT,
                             tags={"outcomes_digest": out_digest, "selection_runs": json.dumps(selections)})
    auto = choose_method(result["rows"], min_datasets=settings.auto_min_datasets, registered=METHODS,
                         preferred=DEFAULT_METHODS)
    result.update(left_out=left_out, outcomes_digest=out_digest, selection_runs=selections, auto=auto.evidence(),
                  accuracies=suite.accuracies, metrics=dict(suite.datasets),
                  priors=[p for p in PRIORS if any(r["method"] == p for r in result["rows"])])
    return result


def last_logged_digest(tracking_uri: str) -> str | None:
    """The ``outcomes_digest`` tag of the newest run in :data:`TRACK_RECORD_EXPERIMENT` (None: no run)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(TRACK_RECORD_EXPERIMENT)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].data.tags.get("outcomes_digest") if runs else None


def log_track_record_if_changed(store: str | None = None, tracking_uri: str | None = None, zoo: str | None = None) -> dict:
    """Log the track record as a new MLflow run when the outcomes changed since the last one logged.

    Returns:
        ``{"status": "logged" | "unchanged" | "empty" | "failed", "outcomes_digest", "run_id" (when logged),
        "reason"}``; ``empty``: the store has no dataset with enough outcomes yet (nothing logged);
        ``failed``: MLflow could not be written (the reason; the next call tries again).
    """
    from lead.errors import InputError
    from storage.outcomes import digest, outcome_files

    settings = Settings.from_env(store=store, tracking_uri=tracking_uri)
    if not outcome_files(settings.store):
        return {"status": "empty", "outcomes_digest": None, "reason": "no outcomes recorded"}
    now = digest(settings.store)
    if last_logged_digest(settings.tracking_uri) == now:
        return {"status": "unchanged", "outcomes_digest": now, "reason": "outcomes unchanged since the last logged run"}
    try:
        result = track_record(store=str(settings.store), tracking_uri=settings.tracking_uri, zoo=zoo)
    except InputError as err:
        return {"status": "empty", "outcomes_digest": now, "reason": str(err)}
    run_id = result["mlflow"].get("run_id")
    return {"status": "logged" if run_id else "failed", "outcomes_digest": now, "run_id": run_id,
            "reason": result["mlflow"].get("error", "")}


@flow(name="bench", validate_parameters=False)
def bench(
    suite: str,
    methods: Sequence[str] = ("lead",),
    store: str | None = None,
    tracking_uri: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    show_progress: bool = False,
) -> dict:
    """Benchmark ``methods`` on ``suite`` (a suite file or built-in suite name).

    Returns:
        JSON-able dict: ``run_id``, ``suite``, ``methods``, ``datasets``, ``rows`` (one per dataset and
        method, see :func:`lead.benchmark.evaluate`), ``mean_weighted_tau`` per method, ``failures``
        (dataset -> error), ``scores`` (dataset -> method -> model -> score), ``table_path``,
        ``plot_path``, ``markdown``, ``mlflow``.
    Raises:
        InputError: a bad suite file or method name.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    settings = Settings.from_env(store=store, tracking_uri=tracking_uri)
    method_ids = parse_methods(methods)
    s = load_suite(suite)
    specs = zoo_specs(s.zoo, logger)
    scores: dict[str, dict[str, dict[str, float]]] = {}
    failures: dict[str, str] = {}
    selections = {}
    for name, source in s.datasets.items():
        if s.features is not None:  # stored features: score the files, no forward pass
            try:
                files = s.stored_features(name)
                plan = plan_methods(method_ids, len(read_metadata_rows(files)))
                raw = score_stored(files, list(plan.computed))
                ranking = rank_scores(plan, {m: {k: v.get(k, math.nan) for k in files} for m, v in raw.items()})
                scores[name] = {m: {k: v for k, v in ranking.scores[m].items() if math.isfinite(v)} for m in method_ids}
            except Exception as err:
                failures[name] = error_text(err)
                logger.error("dataset %s could not be scored: %s", name, err)
            continue
        try:
            sel = rank_zoo(
                dataset=source, zoo=s.zoo, methods=method_ids, store=str(settings.store), tracking_uri=settings.tracking_uri,
                dataset_name=name, device=device, batch_size=batch_size, show_progress=show_progress,
            )
        except Exception as err:  # one dataset's failure is reported; the others are still measured
            failures[name] = error_text(err)
            logger.error("dataset %s could not be ranked: %s", name, err)
            continue
        selections[name] = sel.run_id
        scores[name] = sel.scores_by_method(method_ids)

    result = evaluate_scores(s, scores, method_ids, settings=settings, specs=specs, failures=failures,
                             tags={"selection_runs": json.dumps(selections)}, logger=logger)
    try:
        create_markdown_artifact(markdown=f"# Bench {s.name}: weighted tau\n\n{result['markdown']}", key=artifact_key("bench", s.name),
                                 description=f"Weighted tau per method and dataset on suite {s.name}")
    except Exception as err:
        logger.warning("could not publish the markdown artifact: %s", err)
    result["seconds"] = time.perf_counter() - started
    return result
