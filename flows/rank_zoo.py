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
from prefect.utilities.annotations import quote

from lead import __version__
from lead.config import Settings
from lead.data import check_rankable, resolve_dataset
from lead.errors import DatasetError, InputError, ScoreError
from lead.evaluation import competition_ranks
from lead.extract import CANCEL
from lead.scoring import DEFAULT_METHODS, METHODS, get_method
from lead.zoo import load_zoo, weights_digest, zoo_digest
from storage.logits import is_complete, logits_path
from storage.rankings import write_rankings
from storage.tracking import RunRecord, Tracker, run_url, ui_command
from tasks.extract import extract_logits, extraction_key
from tasks.score import score_model

#: Bound of the default thread pool, read once at import; ``lead rank --max-workers`` overrides it.
DEFAULT_MAX_WORKERS = int(os.environ.get("LEAD_MAX_WORKERS") or 2)


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def artifact_key(prefix: str, name: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes only) for ``name``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unnamed"
    return f"{prefix}-{slug}"[:100]


def parse_methods(methods: Sequence[str] | str) -> list[str]:
    """``"lead,logme"``, ``"all"`` or a list -> validated, de-duplicated method ids (order kept; ``all``
    expands to every registered method, ``lead.scoring.METHODS``).

    Raises:
        InputError: empty, or an unknown method.
    """
    if isinstance(methods, str):
        methods = [m for m in methods.split(",")]
    expanded: list[str] = []
    for m in (m.strip() for m in methods):
        expanded.extend(METHODS if m == "all" else [m])
    out: list[str] = []
    for m in expanded:
        if m and m not in out:
            get_method(m)
            out.append(m)
    if not out:
        raise InputError("rank_zoo: methods must name at least one method; got none.")
    return out


def fallback_primary(method_ids: list[str], n: int, logger=None) -> str:
    """The ranking method: the first of ``method_ids``, unless the dataset has fewer images than it needs
    (GBC needs 64) and a later method can score it; then that one (with a warning). The first method is
    still computed where it can be, and reported."""
    first = method_ids[0]
    if n >= get_method(first).min_samples:
        return first
    for other in method_ids[1:]:
        if n >= get_method(other).min_samples:
            if logger is not None:
                logger.warning("%s needs at least %d images and the dataset has %d: ranking by %s",
                               first, get_method(first).min_samples, n, other)
            return other
    return first


@flow(name="rank-zoo", task_runner=ThreadPoolTaskRunner(max_workers=DEFAULT_MAX_WORKERS), validate_parameters=False)
def rank_zoo(
    dataset: str,
    zoo: str,
    methods: Sequence[str] = DEFAULT_METHODS,
    store: str | None = None,
    tracking_uri: str | None = None,
    dataset_name: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    show_progress: bool = False,
) -> dict:
    """Rank the models of ``zoo`` on ``dataset`` by each method in ``methods`` (the first is primary).

    Args:
        dataset: an ImageFolder directory, a ``path,label`` CSV manifest, or a built-in demo name.
        zoo: a zoo YAML file or a built-in zoo name.
        methods: method ids (``lead.scoring.METHODS``); the ranking is by the first.
        store: the store folder (default ``$LEAD_STORE`` or ``./lead-store``).
        tracking_uri: MLflow tracking URI (default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<store>/mlflow.db``).
        dataset_name: name recorded for the dataset (default: its folder or file name).
        device, batch_size, num_workers: extraction settings (see ``lead.config``).
        show_progress: draw a progress bar per model on stderr.
    Returns:
        The selection as a JSON-able dict: ``run_id``, ``dataset``, ``dataset_fingerprint``,
        ``n_samples``, ``n_classes``, ``methods``, ``models`` (one dict per model, best first, with
        ``status``, ``error``, ``extraction``, ``scores``, ``ranks``), ``best_model``,
        ``rankings_path``, ``mlflow`` (``tracking_uri``, ``experiment_id``, ``run_id``, ``url``,
        ``ui_command``, ``error``).
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
    method_ids = parse_methods(methods)
    primary = method_ids[0]
    ds = check_rankable(resolve_dataset(dataset, datasets_dir=settings.store / "datasets", name=dataset_name))
    for note in ds.notes:
        logger.warning("dataset %s: %s", ds.name, note)
    if method_ids == list(DEFAULT_METHODS):  # the default leaves out what the dataset is too small for
        fit = [m for m in method_ids if len(ds) >= get_method(m).min_samples]
        if fit and fit != method_ids:
            logger.warning("the dataset has %d images: %s left out of the default methods (it needs more)",
                           len(ds), ", ".join(m for m in method_ids if m not in fit))
            method_ids = fit
    primary = fallback_primary(method_ids, len(ds), logger)
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
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, min(DEFAULT_MAX_WORKERS, len(specs)))))

    # Fan-out: one extraction per model.
    models: dict[str, dict] = {
        s.name: {"model": s.name, "arch": s.arch, "weights": s.weights, "status": "ok", "error": "", "extraction": None,
                 "scores": {}, "ranks": {}}
        for s in specs
    }
    futures = {}
    for position, spec in enumerate(specs):
        try:
            digest = weights_digest(spec)
        except Exception as err:
            models[spec.name].update(status="failed", error=_error_text(err))
            logger.error("%s: %s", spec.name, err)
            continue
        key = extraction_key(fingerprint, spec, digest)
        out = logits_path(settings.store, fingerprint, spec.name, key)
        task = extract_logits.with_options(refresh_cache=not is_complete(out, key))
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
    skipped: dict[str, str] = {}
    dataset_errors: list[DatasetError] = []
    for name, fut in futures.items():
        fut.wait()
        state = fut.state
        if not state.is_completed():
            err = state.result(raise_on_failure=False)
            models[name].update(status="failed", error=_error_text(err) if isinstance(err, BaseException) else str(state.message))
            if isinstance(err, DatasetError):
                dataset_errors.append(err)
            logger.error("%s: extraction failed: %s", name, models[name]["error"])
            continue
        result = fut.result()
        skipped.update((sid, err) for sid, err in result.get("skipped", []))
        cached = state.name == "Cached" or not result.get("extracted", True)
        models[name]["extraction"] = {"status": "cached" if cached else "extracted", "path": result["path"],
                                      "seconds": 0.0 if cached else result["seconds"]}
        score_futures[name] = score_model.submit(name, result["path"], method_ids)

    for name, fut in score_futures.items():
        fut.wait()
        if not fut.state.is_completed():
            err = fut.state.result(raise_on_failure=False)
            models[name].update(status="failed", error=_error_text(err) if isinstance(err, BaseException) else str(fut.state.message))
            continue
        models[name]["scoring"] = "cached" if fut.state.name == "Cached" else "computed"
        for method, res in fut.result().items():
            if "score" in res:
                models[name]["scores"][method] = res["score"]
            else:
                models[name].setdefault("method_errors", {})[method] = res["error"]
        if primary not in models[name]["scores"]:
            models[name].update(status="failed", error=models[name].get("method_errors", {}).get(primary, "not scored"))

    # Ranks per method among the models that have that score: 1 = best, equal scores share a rank.
    for method in method_ids:
        ranks = competition_ranks({m["model"]: m["scores"][method] for m in models.values() if method in m["scores"]})
        for name, r in ranks.items():
            models[name]["ranks"][method] = r
    ordered = sorted(models.values(), key=lambda m: (m["ranks"].get(primary, 10**9), m["model"]))
    ok = [m for m in ordered if m["status"] == "ok"]
    best = ok[0]["model"] if ok else ""

    if CANCEL.is_set():  # stopped (Ctrl-C, SIGTERM): what finished is cached; no half-made selection is recorded
        raise InterruptedError(f"rank_zoo: the ranking of {ds.name!r} was interrupted; nothing is recorded.")
    created_at = datetime.now(UTC)
    params = {m: get_method(m).params for m in method_ids}
    params_json = json.dumps({"methods": method_ids, "params": params}, sort_keys=True)
    rows = []
    for m in ordered:
        for method in method_ids:
            error = m["error"] or m.get("method_errors", {}).get(method, "")
            rows.append({
                "run_id": run_id, "created_at": created_at, "dataset": ds.name, "dataset_fingerprint": fingerprint,
                "model": m["model"], "method": method, "score": m["scores"].get(method), "rank": m["ranks"].get(method),
                "n_samples": len(ds), "n_classes": len(ds.classes), "mlflow_run_id": parent_id or "",
                "flow_run_id": str(flow_run.id or ""), "params_json": params_json,
                "status": "ok" if method in m["scores"] else "failed", "error": error,
            })
    rankings_file = write_rankings(settings.store, fingerprint, run_id, rows)

    selection = {
        "run_id": run_id,
        "dataset": ds.name,
        "dataset_path": str(ds.root),
        "dataset_fingerprint": fingerprint,
        "n_samples": len(ds),
        "n_classes": len(ds.classes),
        "methods": method_ids,
        "primary_method": primary,
        "best_model": best,
        "models": ordered,
        "rankings_path": str(rankings_file),
        "zoo_digest": zoo_digest(specs),
        "skipped_images": [{"sample_id": k, "error": v} for k, v in sorted(skipped.items())],
        "dataset_notes": ds.notes,
        "seconds": None,
        "mlflow": mlflow_info,
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
                tags={"best_model": best, "zoo_digest": selection["zoo_digest"], "primary_method": primary,
                      "flow_run_id": str(flow_run.id or ""), "lead_run_id": run_id, "n_models": str(len(ordered)),
                      "failed_models": ",".join(failed), "lead_version": __version__,
                      "skipped_images": str(len(skipped)),
                      **({"skipped_list": ", ".join(sorted(skipped))} if skipped else {})},
                params={"methods": ",".join(method_ids), "n_samples": str(len(ds)), "n_classes": str(len(ds.classes)),
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
            description=f"Ranking of {len(specs)} models on {ds.name} ({len(ds)} images, {len(ds.classes)} classes) "
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
