"""The ``rank-zoo`` flow: rank every model of a zoo on one labelled dataset.

1. Resolve the dataset (fingerprint) and the zoo; create the MLflow experiment before any fan-out.
2. Fan out one ``extract-logits`` task per model on a bounded thread pool (tag ``gpu``, retries,
   cached on dataset fingerprint x model x weights digest x preprocessing).
3. One ``score-model`` task per extracted model computes every requested method.
4. Rank, write the rankings table, log one MLflow parent run with a child run per model (from this
   process, with ``log_batch``), and publish a Prefect table artifact.

A model that fails (weights missing, forward pass raising, a score failing) is recorded with its
error; the others are still ranked. The flow fails only when no model could be scored.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from lead import __version__
from lead.config import Settings
from lead.data import check_rankable, resolve_dataset
from lead.errors import DatasetError, InputError, ScoreError, error_text, strip_ansi
from lead.cost import ModelCost, check_limits, pareto_front, spec_cost
from lead.extract import CANCEL
from lead.scoring import get_method
from lead.scoring.bootstrap import ResampledScore, summarize_ranking
from lead.scoring.ranking import parse_methods as parse_method_list
from lead.scoring.ranking import plan_methods, rank_scores
from lead.trackrecord import is_auto, resolve_auto
from lead.zoo import load_zoo, weights_digest, zoo_digest
from storage.logits import check_cached, logits_path
from storage.figures import selection_markdown, write_selection_figure
from storage.rankings import write_rankings
from storage.tracking import RunRecord, Tracker, run_url, runs_url, ui_command
from tasks.extract import extract_logits, extraction_key
from tasks.score import score_model

#: Bound of the decorator's thread pool for direct Python calls; ``lead rank`` and the nightly flow pass
#: :func:`task_runner` of the resolved settings instead (``LEAD_MAX_WORKERS``, else one per GPU, else 2).
DEFAULT_MAX_WORKERS = int(os.environ.get("LEAD_MAX_WORKERS") or 2)


def task_runner(settings: Settings) -> ThreadPoolTaskRunner:
    """The task runner of a ranking: a thread pool of ``settings.max_workers`` models extracted at once."""
    return ThreadPoolTaskRunner(max_workers=settings.max_workers)


def _error_text(err: BaseException) -> str:
    return error_text(err)


def artifact_key(prefix: str, name: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes only) for ``name``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unnamed"
    return f"{prefix}-{slug}"[:100]


def resolve_auto_methods(store, min_datasets: int):
    """``--method auto``: the store's track record (:func:`storage.outcomes.track_record_inputs`) through the
    pure :func:`lead.trackrecord.resolve_auto`. Returns an :class:`lead.trackrecord.AutoChoice`."""
    from storage.outcomes import track_record_inputs

    return resolve_auto(*track_record_inputs(store), min_datasets=min_datasets)


def parse_methods(methods: Sequence[str] | str | None) -> list[str]:
    """``"lead,logme"``, ``"all"``, a list, or None (the default) -> validated method ids, in order
    (:func:`lead.scoring.ranking.parse_methods`).

    Raises:
        InputError: empty, or an unknown method.
    """
    return parse_method_list(methods)[0]


def best_model_text(best_models: list[str]) -> str:
    """The ``best_model`` of a selection: the one model ranked first, ``tie: a, b`` when several share rank 1
    by exactly equal scores (none is named best; they keep their competition ranks), or ``""`` for none."""
    if len(best_models) > 1:
        return "tie: " + ", ".join(best_models)
    return best_models[0] if best_models else ""


@flow(name="rank-zoo", task_runner=ThreadPoolTaskRunner(max_workers=DEFAULT_MAX_WORKERS), validate_parameters=False)
def rank_zoo(
    dataset: str,
    zoo: str,
    methods: Sequence[str] | str | None = None,
    store: str | None = None,
    tracking_uri: str | None = None,
    dataset_name: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    show_progress: bool = False,
    auto_min_datasets: int | None = None,
    bootstrap: int | None = None,
    bootstrap_seed: int = 0,
    bootstrap_budget: float | None = None,
    max_params: float | None = None,
    max_gflops: float | None = None,
) -> dict:
    """Rank the models of ``zoo`` on ``dataset`` by each method in ``methods`` (the first is primary).

    Args:
        dataset: an ImageFolder directory, a ``path,label`` CSV manifest, or a built-in demo name.
        zoo: a zoo YAML file or a built-in zoo name.
        methods: method ids (``lead.scoring.METHODS``, or ``"all"``); the ranking is by the first (see
            :mod:`lead.scoring.ranking` for the rules). None: the default, ``lead.scoring.DEFAULT_METHODS``.
        store: the store folder (default ``$LEAD_STORE`` or ``./lead-store``).
        tracking_uri: MLflow tracking URI (default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<store>/mlflow.db``).
        dataset_name: name recorded for the dataset (default: its folder or file name).
        device, batch_size, num_workers: extraction settings (see ``lead.config``).
        show_progress: draw a progress bar per model on stderr.
        auto_min_datasets: for ``methods="auto"``: datasets of track record a method needs before it is
            chosen (default ``$LEAD_AUTO_MIN_DATASETS`` or 3; see :mod:`lead.trackrecord`).
        bootstrap: paired bootstrap resamples of the images (default ``$LEAD_BOOTSTRAP`` or 200; 0: off);
            bootstrap_seed: their seed; bootstrap_budget: seconds a recomputed score may spend per model
            (default ``$LEAD_BOOTSTRAP_BUDGET`` or 5). See docs/uncertainty.md.
        max_params, max_gflops: leave out (status ``excluded``, with the reason) the models over these
            limits, counted on the architecture before any forward pass (:mod:`lead.cost`).
    Returns:
        The selection as a JSON-able dict: ``run_id``, ``dataset``, ``dataset_fingerprint``,
        ``n_samples`` (images read), ``n_listed`` (images listed), ``n_classes``, ``methods``, ``models``
        (one dict per model, best first, with ``status``, ``error``, ``extraction``, ``scores``,
        ``ranks``), ``best_model`` (the model ranked first; ``tie: a, b`` when several share rank 1),
        ``best_models`` (every model ranked first), ``warnings`` (damaged cache files set aside),
        ``rankings_path``, ``mlflow`` (``tracking_uri``, ``experiment_id``, ``run_id``, ``url``,
        ``ui_command``, ``error``), ``auto`` (for ``methods="auto"``: the choice and its evidence, else None),
        ``bootstrap`` (B, seed, budget and the notes of methods with fewer resamples or none), ``figure_path``;
        each model also has ``uncertainty`` ({method: P(best), rank interval, ...}), ``cost`` (``params``,
        ``gflops``, ``images_per_s``, ``device``) and ``pareto`` ({method: on the front}).
    Raises:
        InputError/DatasetError: bad dataset, zoo or methods (nothing is run).
        ScoreError: no model could be scored (the failures are still recorded).
    """
    logger = get_run_logger()
    started = time.perf_counter()
    settings = Settings.from_env(
        store=store, tracking_uri=tracking_uri, batch_size=batch_size, num_workers=num_workers,
        bootstrap=bootstrap, bootstrap_budget=bootstrap_budget, **({"device": device} if device else {}),
    )
    check_limits(None if max_params is None and max_gflops is None else ModelCost(0, 0, (1, 1)),
                 max_params=max_params, max_gflops=max_gflops)  # bad limits fail before any work
    auto = resolve_auto_methods(settings.store, auto_min_datasets or settings.auto_min_datasets) if is_auto(methods) else None
    if auto is not None:
        logger.info("--method auto: %s", auto.reason)
        methods = auto.methods
    parse_methods(methods)  # unknown methods fail before any work
    ds = check_rankable(resolve_dataset(dataset, datasets_dir=settings.store / "datasets", name=dataset_name))
    for note in ds.notes:
        logger.warning("dataset %s: %s", ds.name, note)
    fingerprint = ds.fingerprint()
    specs = load_zoo(zoo)
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    logger.info("dataset %s: %d images, %d classes, fingerprint %s", ds.name, len(ds), len(ds.classes), fingerprint[:12])

    # MLflow: database and experiment exist before the fan-out; a tracking failure is reported, never fatal.
    mlflow_info: dict = {"tracking_uri": settings.tracking_uri, "ui_command": ui_command(settings.tracking_uri)}
    tracker = experiment_id = parent_id = None
    try:
        tracker = Tracker(settings.tracking_uri, artifact_root=settings.store / "mlflow-artifacts")
        experiment_id = tracker.ensure_experiment(f"lead/{ds.name}")
        parent_id = tracker.start_parent(
            experiment_id,
            run_name=f"select-{ds.name}-{run_id}",
            tags={"dataset": ds.name, "dataset_fingerprint": fingerprint},
        )
    except Exception as err:
        logger.error("MLflow tracking at %s failed: %s", settings.tracking_uri, err)
        mlflow_info["error"] = _error_text(err)
        tracker = None

    import torch

    if settings.device in ("auto", "cpu") and not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, min(settings.max_workers, len(specs)))))

    # Fan-out: one extraction per model.
    models: dict[str, dict] = {
        s.name: {"model": s.name, "arch": s.arch, "weights": s.weights, "status": "ok", "error": "", "extraction": None,
                 "scores": {}, "ranks": {}, "uncertainty": {}, "pareto": {},
                 "cost": {"params": None, "gflops": None, "images_per_s": None, "device": None}}
        for s in specs
    }
    costs = {}  # the architectures' counts (meta device, no weights): limits, and the cost of cached extractions
    for spec in specs:
        try:
            costs[spec.name] = spec_cost(spec)
        except Exception as err:  # an unknown arch fails at loading, with its own message
            logger.info("%s: cost not counted from the architecture: %s", spec.name, err)
        why = check_limits(costs.get(spec.name), max_params=max_params, max_gflops=max_gflops)
        if why:
            models[spec.name].update(status="excluded", error=f"excluded: {why}")
            logger.warning("%s excluded: %s", spec.name, why)
    futures = {}
    warnings: list[str] = []  # printed under the ranking and kept in the selection
    for position, spec in enumerate(specs):
        if models[spec.name]["status"] == "excluded":
            continue
        try:
            digest = weights_digest(spec)
        except Exception as err:
            models[spec.name].update(status="failed", error=_error_text(err))
            logger.error("%s: %s", spec.name, err)
            continue
        key = extraction_key(fingerprint, spec, digest)
        out = logits_path(settings.store, fingerprint, spec.name, key)
        cached, damaged = check_cached(out, key)  # reads the file whole: a damaged one is set aside
        if damaged:
            logger.warning("%s: %s", spec.name, damaged)
            warnings.append(f"{spec.name}: {damaged}")
        task = extract_logits.with_options(refresh_cache=not cached)
        futures[spec.name] = task.submit(
            quote(ds),
            spec,
            cache_key=key,
            weights_digest=digest,
            out_path=str(out),
            device=settings.device,
            batch_size=settings.batch_size,
            num_workers=settings.num_workers,
            max_bad_fraction=settings.max_bad_fraction,
            progress_position=position if show_progress else None,
        )

    score_futures = {}
    rows_read: dict[str, int] = {}  # rows written per model: the images that could be read
    skipped: dict[str, str] = {}
    dataset_errors: list[DatasetError] = []
    for name, fut in futures.items():
        fut.wait()
        state = fut.state
        if not state.is_completed():
            err = state.result(raise_on_failure=False)
            models[name].update(status="failed", error=_error_text(err) if isinstance(err, BaseException) else strip_ansi(str(state.message)))
            if isinstance(err, DatasetError):
                dataset_errors.append(err)
            logger.error("%s: extraction failed: %s", name, models[name]["error"])
            continue
        result = fut.result()
        skipped.update((sid, err) for sid, err in result.get("skipped", []))
        rows_read[name] = int(result["n"])
        cached = state.name == "Cached" or not result.get("extracted", True)
        models[name]["extraction"] = {"status": "cached" if cached else "extracted", "path": result["path"],
                                      "seconds": 0.0 if cached else result["seconds"]}
        counted = costs.get(name)
        params_n = result.get("params") or (counted.params if counted else None)
        flops = result.get("flops") or (counted.flops if counted else None)
        models[name]["cost"] = {"params": params_n, "gflops": flops / 1e9 if flops else None,
                                "images_per_s": result.get("images_per_s"), "device": result.get("device")}
        score_futures[name] = (score_model, result["path"])

    # The methods are decided on the images actually read (unreadable ones were skipped).
    n_read = min(rows_read.values()) if rows_read else len(ds) - len(skipped)
    plan = plan_methods(methods, n_read)
    for method, why in plan.dropped.items():
        logger.warning("%s left out of the default methods: it %s", method, why)
    if plan.fallback:
        logger.warning("%s", plan.fallback)
    method_ids, primary = list(plan.methods), plan.primary
    score_futures = {name: task.submit(name, path, list(plan.computed), bootstrap=settings.bootstrap, seed=bootstrap_seed,
                                       budget_s=settings.bootstrap_budget)
                     for name, (task, path) in score_futures.items()}
    resampled: dict[str, dict[str, ResampledScore]] = {m: {} for m in plan.computed}

    scores: dict[str, dict[str, float]] = {m: {} for m in plan.computed}
    errors: dict[str, dict[str, str]] = {}
    for name, fut in score_futures.items():
        fut.wait()
        if not fut.state.is_completed():
            err = fut.state.result(raise_on_failure=False)
            models[name].update(status="failed", error=_error_text(err) if isinstance(err, BaseException) else strip_ansi(str(fut.state.message)))
            continue
        models[name]["scoring"] = "cached" if fut.state.name == "Cached" else "computed"
        for method, res in fut.result().items():
            if "resampled" in res:
                resampled[method][name] = ResampledScore.from_dict(res["resampled"])
            if "score" in res:
                scores[method][name] = res["score"]
            else:
                errors.setdefault(method, {})[name] = res["error"]

    # One ranking path with rank_models: ensembles, then ranks per method (1 = best, ties share a rank).
    scored = [n for n, m in models.items() if m.get("scoring")]
    ranking = rank_scores(plan, {m: {n: v.get(n, float("nan")) for n in scored} for m, v in scores.items()}, errors)
    method_ids = list(ranking.methods)
    for name in scored:
        for method in method_ids:
            value = ranking.scores[method].get(name)
            if value is not None and value == value:
                models[name]["scores"][method] = value
            elif name in ranking.errors.get(method, {}):
                models[name].setdefault("method_errors", {})[method] = ranking.errors[method][name]
            if name in ranking.ranks_by[method]:
                models[name]["ranks"][method] = ranking.ranks_by[method][name]
        if primary not in models[name]["scores"]:
            models[name].update(status="failed", error=models[name].get("method_errors", {}).get(primary, "not scored"))
    uncertainty, bootstrap_notes = (summarize_ranking(method_ids, resampled, scores=ranking.scores)
                                    if settings.bootstrap else ({}, {}))
    for method in method_ids:
        for name, u in uncertainty.get(method, {}).items():
            models[name]["uncertainty"][method] = asdict(u)
        front = pareto_front({n: (models[n]["scores"].get(method, math.nan), models[n]["cost"]["gflops"] or math.nan)
                              for n in scored if models[n]["status"] == "ok"})
        for name, on in front.items():
            models[name]["pareto"][method] = on
    for note in bootstrap_notes.values():
        logger.warning("bootstrap: %s", note)
    ordered = sorted(models.values(), key=lambda m: (m["status"] == "excluded", m["ranks"].get(primary, 10**9), m["model"]))
    ok = [m for m in ordered if m["status"] == "ok"]
    best_models = [m["model"] for m in ok if m["ranks"].get(primary) == 1]
    best = best_model_text(best_models)

    if CANCEL.is_set():  # stopped (Ctrl-C, SIGTERM): what finished is cached; no half-made selection is recorded
        raise InterruptedError(f"rank_zoo: the ranking of {ds.name!r} was interrupted; nothing is recorded.")
    created_at = datetime.now(UTC)
    params = {m: get_method(m).params for m in method_ids}
    auto_info = {**auto.evidence(), "primary": primary} if auto is not None else None
    params_json = json.dumps({"methods": method_ids, "params": params, **({"auto": auto_info} if auto else {})},
                             sort_keys=True)
    rows = []
    for m in ordered:
        for method in method_ids:
            error = m["error"] or m.get("method_errors", {}).get(method, "")
            u = m["uncertainty"].get(method, {})
            rows.append({
                **{k: u.get(k) for k in ("p_best", "rank_low", "rank_high", "tied_with_best", "score_low", "score_high")},
                "params": m["cost"]["params"], "gflops": m["cost"]["gflops"], "images_per_s": m["cost"]["images_per_s"],
                "pareto": m["pareto"].get(method) if m["status"] == "ok" else None,
                "run_id": run_id, "created_at": created_at, "dataset": ds.name, "dataset_fingerprint": fingerprint,
                "model": m["model"], "method": method, "score": m["scores"].get(method), "rank": m["ranks"].get(method),
                "n_samples": n_read, "n_classes": len(ds.classes), "mlflow_run_id": parent_id or "",
                "flow_run_id": str(flow_run.id or ""), "params_json": params_json,
                "status": "excluded" if m["status"] == "excluded" else "ok" if method in m["scores"] else "failed",
                "error": error,
            })
    rankings_file = write_rankings(settings.store, fingerprint, run_id, rows)

    selection = {
        "run_id": run_id,
        "dataset": ds.name,
        "dataset_path": str(ds.root),
        "dataset_fingerprint": fingerprint,
        "n_samples": n_read,
        "n_listed": len(ds),
        "n_classes": len(ds.classes),
        "methods": method_ids,
        "primary_method": primary,
        "dropped_methods": dict(plan.dropped),
        "fallback": plan.fallback,
        "n_read": n_read,
        "best_model": best,
        "best_models": best_models,
        "models": ordered,
        "rankings_path": str(rankings_file),
        "zoo_digest": zoo_digest(specs),
        "skipped_images": [{"sample_id": k, "error": v} for k, v in sorted(skipped.items())],
        "dataset_notes": ds.notes,
        "warnings": warnings,
        "seconds": None,
        "mlflow": mlflow_info,
        "auto": auto_info,
        "bootstrap": {"resamples": settings.bootstrap, "seed": bootstrap_seed, "budget_s": settings.bootstrap_budget,
                      "notes": bootstrap_notes},
        "limits": {"max_params": max_params, "max_gflops": max_gflops},
        "figure_path": None,
    }
    try:
        selection["figure_path"] = str(write_selection_figure(settings.store, fingerprint, run_id, selection))
    except Exception as err:  # the picture is a convenience; the ranking is already stored
        logger.warning("could not draw the selection's figure: %s", err)

    if tracker is not None:
        try:
            children = [
                RunRecord(
                    name=m["model"],
                    tags={"model": m["model"], "arch": m["arch"], "weights": m["weights"], "status": m["status"],
                          **({"error": m["error"]} if m["error"] else {}),
                          **({"extraction": m["extraction"]["status"]} if m["extraction"] else {})},
                    params={f"preprocessing.{k}": json.dumps(v) for k, v in
                            next(s for s in specs if s.name == m["model"]).preprocessing().items()},
                    metrics={**m["scores"], **{f"rank_{k}": v for k, v in m["ranks"].items()},
                             **{f"{field}_{k}": u[field] for k, u in m["uncertainty"].items()
                                for field in ("p_best", "rank_low", "rank_high")},
                             **({"p_best": m["uncertainty"][primary]["p_best"]} if primary in m["uncertainty"] else {}),
                             **{k: v for k, v in m["cost"].items() if k != "device" and v is not None}},
                )
                for m in ordered
            ]
            failed = [m["model"] for m in ordered if m["status"] == "failed"]
            excluded = [m["model"] for m in ordered if m["status"] == "excluded"]
            parent = RunRecord(
                name=ds.name,
                tags={"best_model": best, "best_models": ",".join(best_models), "zoo_digest": selection["zoo_digest"], "primary_method": primary,
                      "flow_run_id": str(flow_run.id or ""), "lead_run_id": run_id, "n_models": str(len(ordered)),
                      "failed_models": ",".join(failed), "lead_version": __version__,
                      **({"excluded_models": ",".join(excluded)} if excluded else {}),
                      "skipped_images": str(len(skipped)),
                      **({"skipped_list": ", ".join(sorted(skipped))} if skipped else {}),
                      **({"auto_method": primary, "auto_evidence": json.dumps(auto_info)} if auto else {})},
                params={"methods": ",".join(method_ids), "n_samples": str(n_read), "n_classes": str(len(ds.classes)),
                        "bootstrap": str(settings.bootstrap), "bootstrap_seed": str(bootstrap_seed),
                        "bootstrap_budget_s": str(settings.bootstrap_budget),
                        **{k: str(v) for k, v in selection["limits"].items() if v is not None},
                        **({"auto_min_datasets": str(auto.min_datasets)} if auto else {}),
                        **{f"{meth}.{k}": v if isinstance(v, str) else json.dumps(v)
                           for meth, p in params.items() for k, v in p.items()}},
                metrics={f"best_{primary}": ok[0]["scores"][primary], **ok[0]["scores"],
                         **({"p_best": ok[0]["uncertainty"][primary]["p_best"]} if primary in ok[0]["uncertainty"] else {})}
                if ok else {},
            )
            tracker.log_selection(experiment_id, parent_id, parent, children, artifact={k: v for k, v in selection.items() if k != "mlflow"},
                                  figure=Path(selection["figure_path"]) if selection["figure_path"] else None)
            mlflow_info.update(experiment_id=experiment_id, run_id=parent_id,
                               url=run_url(settings.tracking_uri, experiment_id, parent_id),
                               runs_url=runs_url(settings.tracking_uri, experiment_id))
        except Exception as err:
            logger.error("MLflow logging failed: %s", err)
            mlflow_info["error"] = _error_text(err)

    table = [
        {"rank": m["ranks"].get(primary, ""), "model": m["model"], **{k: m["scores"].get(k, "") for k in method_ids},
         "p_best": m["uncertainty"].get(primary, {}).get("p_best", ""), "params": m["cost"]["params"] or "",
         "gflops": m["cost"]["gflops"] or "", "status": m["status"], "error": m["error"][:200]}
        for m in ordered
    ]
    try:
        create_markdown_artifact(markdown=selection_markdown(selection), key=artifact_key("selection", ds.name),
                                 description=f"The selection on {ds.name}: figure, P(best), cost.")
    except Exception as err:
        logger.warning("could not publish the markdown artifact: %s", err)
    try:
        create_table_artifact(
            table=table,
            key=artifact_key("ranking", ds.name),
            description=f"Ranking of {len(specs)} models on {ds.name} ({n_read} images, {len(ds.classes)} classes) "
                        f"by {primary}; best: {best or 'none'}.",
        )
    except Exception as err:  # the artifact is a convenience; the ranking is already stored
        logger.warning("could not publish the table artifact: %s", err)

    selection["seconds"] = time.perf_counter() - started
    if skipped:
        logger.warning("%d unreadable images were skipped: %s", len(skipped), ", ".join(sorted(skipped)[:10]))
    logger.info("best model on %s by %s: %s", ds.name, primary, best or "none")
    if not ok:
        if dataset_errors and len(dataset_errors) == len(futures):  # the data, not the models, is at fault
            raise DatasetError(str(dataset_errors[0]))
        reasons = "; ".join(f"{m['model']}: {m['error']}" for m in ordered)
        raise ScoreError(f"rank_zoo: at least one model must be scored on {ds.name!r}; every model failed ({reasons}).")
    return selection
