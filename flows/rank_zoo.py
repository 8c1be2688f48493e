"""The ``rank-zoo`` flow: rank every model of a zoo on one labelled dataset.

1. Resolve the dataset (fingerprint) and the zoo; create the MLflow experiment before any fan-out.
2. Fan out one ``extract-logits`` task per model on the task runner of ``LEAD_EXECUTOR``
   (:mod:`flows.runners`: a bounded thread pool, or Dask worker processes, each extraction holding a
   worker's ``GPU`` resource; tag ``gpu``, retries, cached on dataset fingerprint x model x weights digest
   x preprocessing).
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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runners import check_cluster, gpu, settle, task_runner
from lead.config import Settings, cpu_threads
from lead.cost import ModelCost, check_limits, pareto_front
from lead.dataref import DatasetRef
from lead.errors import DatasetError, InputError, ScoreError, error_text, strip_ansi
from lead.extract import CANCEL
from lead.plan import RankingPlan, plan_ranking
from lead.scoring import get_method
from lead.scoring.ranking import MethodPlan, parse_methods as parse_method_list
from lead.scoring.bootstrap import ResampledScore, summarize_ranking
from lead.scoring.ranking import rank_scores
from lead.selection import Extraction, MlflowInfo, ModelResult, Selection
from lead.zoo import weights_digest
from storage.costs import cached_spec_cost
from storage.logits import check_cached
from storage.figures import selection_markdown, write_selection_figure
from storage.rankings import selection_rows, write_rankings
from storage.store import Store
from storage.tracking import Tracker, run_url, runs_url, selection_records, ui_command
from tasks.extract import extract_logits, extraction_key
from tasks.score import score_model

#: Bound of the decorator's thread pool for direct Python calls; ``lead rank`` and the nightly flow pass
#: :func:`task_runner` of the resolved settings instead (``LEAD_MAX_WORKERS``, else one per GPU, else 2).
DEFAULT_MAX_WORKERS = int(os.environ.get("LEAD_MAX_WORKERS") or 2)


def _decorator_runner():
    """The runner of a run that gets no other (a deployment's run under ``lead serve`` or a work pool, a
    direct Python call): the executor of the environment (``LEAD_EXECUTOR``), ``DEFAULT_MAX_WORKERS`` wide.
    A bad ``LEAD_*`` value gets the thread pool here; the flow's own settings then report it."""
    if (os.environ.get("LEAD_EXECUTOR") or "threads").strip().lower() == "threads":
        return ThreadPoolTaskRunner(max_workers=DEFAULT_MAX_WORKERS)  # without reading settings (no torch import)
    try:
        return task_runner(Settings.from_env(max_workers=DEFAULT_MAX_WORKERS))
    except InputError:
        return ThreadPoolTaskRunner(max_workers=DEFAULT_MAX_WORKERS)


def artifact_key(prefix: str, name: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes only) for ``name``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unnamed"
    return f"{prefix}-{slug}"[:100]


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


def plan_for_store(dataset: str | DatasetRef, zoo: str, methods, settings: Settings,
                   dataset_name: str | None = None) -> RankingPlan:
    """:func:`lead.plan.plan_ranking` on the store of ``settings``: its ``datasets/`` folder and, for
    ``--method auto``, its track record (:func:`storage.outcomes.track_record_inputs`)."""
    from storage.outcomes import track_record_inputs

    st = Store.of(settings.store)
    return plan_ranking(dataset, zoo, methods, settings=settings, datasets_dir=st.datasets_dir, dataset_name=dataset_name,
                        track_record=lambda: track_record_inputs(st.root))


def _state_error(state) -> tuple[BaseException | None, str]:
    """The exception of a task run that did not complete, and its one-line text."""
    err = state.result(raise_on_failure=False)
    if isinstance(err, BaseException):
        return err, error_text(err)
    return None, strip_ansi(str(state.message))


@dataclass
class _Tracking:
    """The MLflow side of a ranking: the database and experiment exist before the fan-out, and the parent
    run is started; a tracking failure is reported in ``info``, never fatal."""

    info: MlflowInfo
    tracker: Tracker | None = None
    experiment_id: str | None = None
    parent_id: str | None = None

    @classmethod
    def start(cls, settings: Settings, st: Store, ref: DatasetRef, run_id: str, logger) -> _Tracking:
        t = cls(MlflowInfo(settings.tracking_uri, ui_command(settings.tracking_uri)))
        try:
            t.tracker = Tracker(settings.tracking_uri, artifact_root=st.mlflow_artifacts)
            t.experiment_id = t.tracker.ensure_experiment(f"lead/{ref.name}")
            t.parent_id = t.tracker.start_parent(t.experiment_id, run_name=f"select-{ref.name}-{run_id}",
                                                 tags={"dataset": ref.name, "dataset_fingerprint": ref.fingerprint})
        except Exception as err:
            logger.error("MLflow tracking at %s failed: %s", settings.tracking_uri, err)
            t.info.error, t.tracker = error_text(err), None
        return t

    def log(self, sel: Selection, plan: RankingPlan, params: dict, logger) -> None:
        """Log the selection (parent, a child per model, ``ranking.json``) from this process."""
        if self.tracker is None:
            return
        try:
            parent, children = selection_records(sel, {s.name: s.preprocessing() for s in plan.specs}, params,
                                                 flow_run_id=str(flow_run.id or ""))
            artifact = {k: v for k, v in sel.to_dict().items() if k != "mlflow"}
            self.tracker.log_selection(self.experiment_id, self.parent_id, parent, children, artifact=artifact,
                                       figure=Path(sel.figure_path) if sel.figure_path else None)
            self.info.experiment_id, self.info.run_id = self.experiment_id, self.parent_id
            self.info.url = run_url(self.info.tracking_uri, self.experiment_id, self.parent_id)
            self.info.runs_url = runs_url(self.info.tracking_uri, self.experiment_id)
        except Exception as err:
            logger.error("MLflow logging failed: %s", err)
            self.info.error = error_text(err)


@dataclass
class _Extracted:
    """What the extractions left: each extracted model's logits key, rows read per model (the images that
    could be decoded), the images skipped, and the dataset errors (the data, not a model, at fault)."""

    keys: dict[str, str] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    dataset_errors: list[DatasetError] = field(default_factory=list)
    submitted: int = 0


def _split_threads(settings: Settings, n_models: int) -> None:
    """On CPU, split torch's intra-op threads between the extractions that run at once."""
    import torch

    if settings.device in ("auto", "cpu") and not torch.cuda.is_available():
        torch.set_num_threads(max(1, cpu_threads() // max(1, min(settings.max_workers, n_models))))


def _extract_all(plan: RankingPlan, st: Store, models: dict[str, ModelResult], warnings: list[str],
                 show_progress: bool, logger, costs: dict[str, ModelCost] | None = None) -> _Extracted:
    """Fan out one ``extract-logits`` task per model (a cached one refreshed when its file is gone) and
    wait for them; a model that fails is recorded in ``models``."""
    settings, ref = plan.settings, plan.dataset
    futures, keys, todo = {}, {}, []
    for position, spec in enumerate(plan.specs):
        if models[spec.name].status == "excluded":
            continue
        try:
            digest = weights_digest(spec)
        except Exception as err:
            models[spec.name].fail(error_text(err))
            logger.error("%s: %s", spec.name, err)
            continue
        cache_key = extraction_key(ref.fingerprint, spec, digest)
        keys[spec.name] = st.logits_key(ref.fingerprint, spec.name, cache_key)
        cached, damaged = check_cached(st.path(keys[spec.name]), cache_key)  # reads it whole: a damaged one is set aside
        if damaged:
            logger.warning("%s: %s", spec.name, damaged)
            warnings.append(f"{spec.name}: {damaged}")
        todo.append((position, spec, cache_key, digest, cached))
    if any(not cached for *_, cached in todo):
        _split_threads(settings, sum(not cached for *_, cached in todo))  # imports torch: only when a model runs
    for position, spec, cache_key, digest, cached in todo:
        with gpu():  # on Dask: the task holds one GPU resource of its worker
            futures[spec.name] = extract_logits.with_options(refresh_cache=not cached).submit(
                ref, spec, cache_key=cache_key, weights_digest=digest, store=str(st.root), key=keys[spec.name],
                device=settings.device, batch_size=settings.batch_size, num_workers=settings.num_workers,
                max_bad_fraction=settings.max_bad_fraction, progress_position=position if show_progress else None,
            )
    done = _Extracted(submitted=len(futures))
    for name, fut in futures.items():
        state = settle(fut)  # a Dask worker that died: Failed, with the reason
        if not state.is_completed():
            err, text = _state_error(state)
            models[name].fail(text)
            if isinstance(err, DatasetError):
                done.dataset_errors.append(err)
            logger.error("%s: extraction failed: %s", name, text)
            continue
        result = state.result()
        done.skipped.update((sid, err) for sid, err in result.get("skipped", []))
        done.rows[name], done.keys[name] = int(result["n"]), keys[name]
        cached = state.name == "Cached" or not result.get("extracted", True)
        models[name].extraction = Extraction("cached" if cached else "extracted", result["path"],
                                             0.0 if cached else result["seconds"], worker=result.get("worker", ""),
                                             device=result.get("device", ""), start=result.get("extract_start", ""),
                                             end=result.get("extract_end", ""))
        counted = (costs or {}).get(name)  # the architecture's counts stand in for a file that predates them
        flops = result.get("flops") or (counted.flops if counted else None)
        models[name].cost = {"params": result.get("params") or (counted.params if counted else None),
                             "gflops": flops / 1e9 if flops else None,
                             "images_per_s": result.get("images_per_s"), "device": result.get("device")}
    return done


def _costs_and_limits(plan: RankingPlan, st: Store, models: dict[str, ModelResult], limits: dict,
                      logger) -> dict[str, ModelCost]:
    """Each model's parameters and FLOPs counted on its architecture (the meta device: no weights, no
    compute; :func:`lead.cost.spec_cost`), once per store (:func:`storage.costs.cached_spec_cost`); the
    models over ``--max-params``/``--max-gflops`` are excluded."""
    costs: dict[str, ModelCost] = {}
    for spec in plan.specs:
        try:
            costs[spec.name] = cached_spec_cost(spec, st)
        except Exception as err:  # an unknown architecture fails at loading, with its own message
            logger.info("%s: cost not counted from the architecture: %s", spec.name, err)
        why = check_limits(costs.get(spec.name), **limits)
        if why:
            models[spec.name].exclude(why)
            logger.warning("%s excluded: %s", spec.name, why)
    return costs


def _score_and_rank(mplan: MethodPlan, st: Store, keys: dict[str, str], models: dict[str, ModelResult],
                    settings: Settings, logger=None) -> tuple[list[str], dict[str, str]]:
    """One ``score-model`` task per extracted model (with its paired bootstrap), then the one ranking path
    (:func:`rank_scores`: ensembles, then ranks per method; 1 = best, ties share a rank), the bootstrap's
    P(best) and rank intervals (:func:`lead.scoring.bootstrap.summarize_ranking`) and each method's Pareto
    front against GFLOPs, into ``models``. Returns the methods reported and the bootstrap's notes."""
    futures = {name: score_model.submit(name, str(st.root), key, list(mplan.computed), bootstrap=settings.bootstrap,
                                        seed=settings.bootstrap_seed, budget_s=settings.bootstrap_budget)
               for name, key in keys.items()}
    resampled: dict[str, dict[str, ResampledScore]] = {m: {} for m in mplan.computed}
    scores: dict[str, dict[str, float]] = {m: {} for m in mplan.computed}
    errors: dict[str, dict[str, str]] = {}
    for name, fut in futures.items():
        state = settle(fut)
        if not state.is_completed():
            models[name].fail(_state_error(state)[1])
            continue
        models[name].scoring = "cached" if state.name == "Cached" else "computed"
        for method, res in state.result().items():
            if "resampled" in res:
                resampled[method][name] = ResampledScore.from_dict(res["resampled"])
            if "score" in res:
                scores[method][name] = res["score"]
            else:
                errors.setdefault(method, {})[name] = res["error"]
    scored = [n for n, m in models.items() if m.scoring]
    ranking = rank_scores(mplan, {m: {n: v.get(n, float("nan")) for n in scored} for m, v in scores.items()}, errors)
    for name in scored:
        m = models[name]
        for method in ranking.methods:
            value = ranking.scores[method].get(name)
            if value is not None and value == value:
                m.scores[method] = value
            elif name in ranking.errors.get(method, {}):
                m.method_errors[method] = ranking.errors[method][name]
            if name in ranking.ranks_by[method]:
                m.ranks[method] = ranking.ranks_by[method][name]
        if mplan.primary not in m.scores:
            m.fail(m.method_errors.get(mplan.primary, "not scored"))
    uncertainty, notes = (summarize_ranking(ranking.methods, resampled, scores=ranking.scores)
                          if settings.bootstrap else ({}, {}))
    for method in ranking.methods:
        for name, u in uncertainty.get(method, {}).items():
            models[name].uncertainty[method] = asdict(u)
        ranked = [n for n in scored if models[n].ok]
        front = pareto_front({n: (models[n].scores.get(method, math.nan), models[n].cost.get("gflops") or math.nan)
                              for n in ranked})
        for name, on in front.items():
            models[name].pareto[method] = on
    for note in notes.values():
        if logger is not None:
            logger.warning("bootstrap: %s", note)
    return list(ranking.methods), notes


def _record(sel: Selection, plan: RankingPlan, st: Store, tracking: _Tracking, logger) -> None:
    """Write the rankings table, log the selection to MLflow, publish the Prefect table artifact."""
    params = {m: get_method(m).params for m in sel.methods}
    params_json = json.dumps({"methods": sel.methods, "params": params, **({"auto": sel.auto} if sel.auto else {})},
                             sort_keys=True)
    rows = selection_rows(sel, created_at=datetime.now(UTC), params_json=params_json,
                          mlflow_run_id=tracking.parent_id or "", flow_run_id=str(flow_run.id or ""))
    sel.rankings_path = str(write_rankings(st.root, sel.dataset_fingerprint, sel.run_id, rows))
    try:
        sel.figure_path = str(write_selection_figure(st, sel))
    except Exception as err:  # the picture is a convenience; the ranking is already stored
        logger.warning("could not draw the selection's figure: %s", err)
    tracking.log(sel, plan, params, logger)
    primary = sel.primary_method
    table = [{"rank": m.ranks.get(primary, ""), "model": m.model, **{k: m.scores.get(k, "") for k in sel.methods},
              "p_best": m.uncertainty.get(primary, {}).get("p_best", ""), "params": m.cost.get("params") or "",
              "gflops": m.cost.get("gflops") or "", "status": m.status, "error": m.error[:200]} for m in sel.models]
    try:
        create_markdown_artifact(markdown=selection_markdown(sel), key=artifact_key("selection", sel.dataset),
                                 description=f"The selection on {sel.dataset}: its figure, P(best) and cost.")
    except Exception as err:  # a convenience, as the table
        logger.warning("could not publish the markdown artifact: %s", err)
    try:
        create_table_artifact(
            table=table, key=artifact_key("ranking", sel.dataset),
            description=f"Ranking of {len(plan.specs)} models on {sel.dataset} ({sel.n_read} images, {sel.n_classes} "
                        f"classes) by {primary}; best: {sel.best_model or 'none'}.",
        )
    except Exception as err:  # the artifact is a convenience; the ranking is already stored
        logger.warning("could not publish the table artifact: %s", err)


@flow(name="rank-zoo", task_runner=_decorator_runner(), validate_parameters=False)
def rank_zoo(
    dataset: str | DatasetRef,
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
    bootstrap_seed: int | None = None,
    bootstrap_budget: float | None = None,
    max_params: float | None = None,
    max_gflops: float | None = None,
) -> Selection:
    """Rank the models of ``zoo`` on ``dataset`` by each method in ``methods`` (the first is primary).

    Args:
        dataset: an ImageFolder directory, a ``path,label`` CSV manifest, a built-in demo name, or the
            :class:`lead.dataref.DatasetRef` of a plan (``lead rank`` passes its preflight's).
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
            bootstrap_seed: their seed (default ``$LEAD_BOOTSTRAP_SEED`` or 0); bootstrap_budget: seconds a
            recomputed score may spend per model (default ``$LEAD_BOOTSTRAP_BUDGET`` or 5). docs/uncertainty.md.
        max_params, max_gflops: leave out (status ``excluded``, with the reason, not extracted) the models over
            these limits, counted on their architecture (:mod:`lead.cost`).
    Returns:
        The :class:`lead.selection.Selection` (``to_dict()`` is its JSON document): the dataset, the methods,
        one :class:`lead.selection.ModelResult` per model best first, the best model (``tie: a, b`` when
        several share rank 1), the rankings file, where MLflow recorded it, and for ``auto`` the choice.
    Raises:
        InputError/DatasetError: bad dataset, zoo or methods (nothing is run).
        ScoreError: no model could be scored (the failures are still recorded).
    """
    logger = get_run_logger()
    started = time.perf_counter()
    settings = Settings.from_env(store=store, tracking_uri=tracking_uri, batch_size=batch_size, num_workers=num_workers,
                                 auto_min_datasets=auto_min_datasets, bootstrap=bootstrap, bootstrap_seed=bootstrap_seed,
                                 bootstrap_budget=bootstrap_budget, **({"device": device} if device else {}))
    limits = {"max_params": max_params, "max_gflops": max_gflops}
    check_limits(ModelCost(0, 0, (1, 1)), **limits)  # a bad limit fails before any work
    plan = plan_for_store(dataset, zoo, methods, settings, dataset_name)
    if plan.auto is not None:
        logger.info("--method auto: %s", plan.auto.reason)
    sel = rank_planned(plan, show_progress=show_progress, logger=logger, limits=limits)
    sel.seconds = time.perf_counter() - started
    return sel


def rank_planned(plan: RankingPlan, show_progress: bool = False, logger=None, limits: dict | None = None) -> Selection:
    """Rank by ``plan`` (inside a flow run): count the costs and apply ``limits`` (``max_params``,
    ``max_gflops``), extract, score with the bootstrap, rank, record. See :func:`rank_zoo`."""
    limits = {"max_params": None, "max_gflops": None, **(limits or {})}
    logger = logger or get_run_logger()
    st, ref = Store.of(plan.settings.store), plan.dataset
    for note in plan.notes:
        logger.warning("dataset %s: %s", ref.name, note)
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    logger.info("dataset %s: %d images, %d classes, fingerprint %s", ref.name, ref.n_samples, plan.n_classes,
                ref.fingerprint[:12])
    workers = check_cluster()  # on Dask: start or reach the cluster now; refuse one where no extraction could run
    if workers:
        logger.info("tasks run on %d Dask worker(s): %s", len(workers), ", ".join(sorted(workers)))
        show_progress = False  # bars drawn by several worker processes would garble the terminal
    tracking = _Tracking.start(plan.settings, st, ref, run_id, logger)
    models = {s.name: ModelResult(s.name, s.arch, s.weights) for s in plan.specs}
    costs = _costs_and_limits(plan, st, models, limits, logger)
    warnings: list[str] = []  # printed under the ranking and kept in the selection
    done = _extract_all(plan, st, models, warnings, show_progress, logger, costs)
    # The methods are decided on the images actually read (unreadable ones were skipped).
    n_read = min(done.rows.values()) if done.rows else ref.n_samples - len(done.skipped)
    mplan = plan.request.on(n_read)
    for method, why in mplan.dropped.items():
        logger.warning("%s left out of the default methods: it %s", method, why)
    if mplan.fallback:
        logger.warning("%s", mplan.fallback)
    (method_ids, notes), primary = _score_and_rank(mplan, st, done.keys, models, plan.settings, logger), mplan.primary
    ordered = sorted(models.values(), key=lambda m: (m.status == "excluded", m.ranks.get(primary, 10**9), m.model))
    best_models = [m.model for m in ordered if m.ok and m.ranks.get(primary) == 1]
    if CANCEL.is_set():  # stopped (Ctrl-C, SIGTERM): what finished is cached; no half-made selection is recorded
        raise InterruptedError(f"rank_zoo: the ranking of {ref.name!r} was interrupted; nothing is recorded.")
    sel = Selection(
        run_id=run_id, dataset=ref.name, dataset_path=plan.dataset_root, dataset_fingerprint=ref.fingerprint,
        n_samples=n_read, n_listed=ref.n_samples, n_classes=plan.n_classes, methods=method_ids, primary_method=primary,
        dropped_methods=dict(mplan.dropped), fallback=mplan.fallback, n_read=n_read,
        best_model=best_model_text(best_models), best_models=best_models, models=ordered, rankings_path="",
        zoo_digest=plan.zoo_digest, skipped_images=[{"sample_id": k, "error": v} for k, v in sorted(done.skipped.items())],
        dataset_notes=list(plan.notes), warnings=warnings, mlflow=tracking.info,
        auto={**plan.auto.evidence(), "primary": primary} if plan.auto is not None else None,
        bootstrap={"resamples": plan.settings.bootstrap, "seed": plan.settings.bootstrap_seed,
                   "budget_s": plan.settings.bootstrap_budget, "notes": notes},
        limits=limits,
    )
    _record(sel, plan, st, tracking, logger)
    return _finish(sel, done, logger)


def _finish(sel: Selection, done: _Extracted, logger) -> Selection:
    """Report what was skipped and the best model; fail when no model could be scored."""
    if done.skipped:
        logger.warning("%d unreadable images were skipped: %s", len(done.skipped), ", ".join(sorted(done.skipped)[:10]))
    logger.info("best model on %s by %s: %s", sel.dataset, sel.primary_method, sel.best_model or "none")
    if not sel.ok_models:
        if done.dataset_errors and len(done.dataset_errors) == done.submitted:
            raise DatasetError(str(done.dataset_errors[0]))  # the data, not the models, is at fault
        reasons = "; ".join(f"{m.model}: {m.error}" for m in sel.models)
        raise ScoreError(f"rank_zoo: at least one model must be scored on {sel.dataset!r}; every model failed ({reasons}).")
    return sel
