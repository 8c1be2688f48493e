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
import os
import re
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from lead import __version__
from lead.config import Settings
from lead.data import check_rankable, resolve_dataset
from lead.errors import DatasetError, InputError, ScoreError, error_text, strip_ansi
from lead.extract import CANCEL
from lead.scoring import get_method
from lead.scoring.ranking import parse_methods as parse_method_list
from lead.scoring.ranking import plan_methods, rank_scores
from lead.trackrecord import is_auto, resolve_auto
from lead.zoo import load_zoo, weights_digest, zoo_digest
from lead.dataref import DatasetRef
from storage.logits import check_cached
from storage.store import Store
from storage.rankings import write_rankings
from storage.tracking import RunRecord, Tracker, run_url, ui_command
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
    Returns:
        The selection as a JSON-able dict: ``run_id``, ``dataset``, ``dataset_fingerprint``,
        ``n_samples`` (images read), ``n_listed`` (images listed), ``n_classes``, ``methods``, ``models``
        (one dict per model, best first, with ``status``, ``error``, ``extraction``, ``scores``,
        ``ranks``), ``best_model`` (the model ranked first; ``tie: a, b`` when several share rank 1),
        ``best_models`` (every model ranked first), ``warnings`` (damaged cache files set aside),
        ``rankings_path``, ``mlflow`` (``tracking_uri``, ``experiment_id``, ``run_id``, ``url``,
        ``ui_command``, ``error``), ``auto`` (for ``methods="auto"``: the choice and its evidence, else None).
    Raises:
        InputError/DatasetError: bad dataset, zoo or methods (nothing is run).
        ScoreError: no model could be scored (the failures are still recorded).
    """
    logger = get_run_logger()
    started = time.perf_counter()
    settings = Settings.from_env(
        store=store, tracking_uri=tracking_uri, batch_size=batch_size, num_workers=num_workers,
        **({"device": device} if device else {}),
    )
    auto = resolve_auto_methods(settings.store, auto_min_datasets or settings.auto_min_datasets) if is_auto(methods) else None
    if auto is not None:
        logger.info("--method auto: %s", auto.reason)
        methods = auto.methods
    parse_methods(methods)  # unknown methods fail before any work
    st = Store.of(settings.store)
    ds = check_rankable(resolve_dataset(dataset, datasets_dir=st.datasets_dir, name=dataset_name))
    ref = DatasetRef.of(dataset, ds)
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
        tracker = Tracker(settings.tracking_uri, artifact_root=st.mlflow_artifacts)
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
                 "scores": {}, "ranks": {}}
        for s in specs
    }
    futures = {}
    keys: dict[str, str] = {}  # each model's logits file, as a key under the store
    warnings: list[str] = []  # printed under the ranking and kept in the selection
    for position, spec in enumerate(specs):
        try:
            digest = weights_digest(spec)
        except Exception as err:
            models[spec.name].update(status="failed", error=_error_text(err))
            logger.error("%s: %s", spec.name, err)
            continue
        key = extraction_key(fingerprint, spec, digest)
        keys[spec.name] = st.logits_key(fingerprint, spec.name, key)
        out = st.path(keys[spec.name])
        cached, damaged = check_cached(out, key)  # reads the file whole: a damaged one is set aside
        if damaged:
            logger.warning("%s: %s", spec.name, damaged)
            warnings.append(f"{spec.name}: {damaged}")
        task = extract_logits.with_options(refresh_cache=not cached)
        futures[spec.name] = task.submit(
            ref,
            spec,
            cache_key=key,
            weights_digest=digest,
            store=str(st.root),
            key=keys[spec.name],
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
        score_futures[name] = (score_model, keys[name])

    # The methods are decided on the images actually read (unreadable ones were skipped).
    n_read = min(rows_read.values()) if rows_read else len(ds) - len(skipped)
    plan = plan_methods(methods, n_read)
    for method, why in plan.dropped.items():
        logger.warning("%s left out of the default methods: it %s", method, why)
    if plan.fallback:
        logger.warning("%s", plan.fallback)
    method_ids, primary = list(plan.methods), plan.primary
    score_futures = {name: task.submit(name, str(st.root), key, list(plan.computed)) for name, (task, key) in score_futures.items()}

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
    ordered = sorted(models.values(), key=lambda m: (m["ranks"].get(primary, 10**9), m["model"]))
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
            rows.append({
                "run_id": run_id, "created_at": created_at, "dataset": ds.name, "dataset_fingerprint": fingerprint,
                "model": m["model"], "method": method, "score": m["scores"].get(method), "rank": m["ranks"].get(method),
                "n_samples": n_read, "n_classes": len(ds.classes), "mlflow_run_id": parent_id or "",
                "flow_run_id": str(flow_run.id or ""), "params_json": params_json,
                "status": "ok" if method in m["scores"] else "failed", "error": error,
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
    }

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
                    metrics={**m["scores"], **{f"rank_{k}": v for k, v in m["ranks"].items()}},
                )
                for m in ordered
            ]
            failed = [m["model"] for m in ordered if m["status"] != "ok"]
            parent = RunRecord(
                name=ds.name,
                tags={"best_model": best, "best_models": ",".join(best_models), "zoo_digest": selection["zoo_digest"], "primary_method": primary,
                      "flow_run_id": str(flow_run.id or ""), "lead_run_id": run_id, "n_models": str(len(ordered)),
                      "failed_models": ",".join(failed), "lead_version": __version__,
                      "skipped_images": str(len(skipped)),
                      **({"skipped_list": ", ".join(sorted(skipped))} if skipped else {}),
                      **({"auto_method": primary, "auto_evidence": json.dumps(auto_info)} if auto else {})},
                params={"methods": ",".join(method_ids), "n_samples": str(n_read), "n_classes": str(len(ds.classes)),
                        **({"auto_min_datasets": str(auto.min_datasets)} if auto else {}),
                        **{f"{meth}.{k}": v if isinstance(v, str) else json.dumps(v)
                           for meth, p in params.items() for k, v in p.items()}},
                metrics={f"best_{primary}": ok[0]["scores"][primary]} if ok else {},
            )
            tracker.log_selection(experiment_id, parent_id, parent, children, artifact={k: v for k, v in selection.items() if k != "mlflow"})
            mlflow_info.update(experiment_id=experiment_id, run_id=parent_id,
                               url=run_url(settings.tracking_uri, experiment_id, parent_id))
        except Exception as err:
            logger.error("MLflow logging failed: %s", err)
            mlflow_info["error"] = _error_text(err)

    table = [
        {"rank": m["ranks"].get(primary, ""), "model": m["model"], **{k: m["scores"].get(k, "") for k in method_ids},
         "status": m["status"], "error": m["error"][:200]}
        for m in ordered
    ]
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
