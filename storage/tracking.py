"""MLflow tracking of selections: one parent run per ranking, one child run per model.

All runs are created and logged from the calling (flow) process with ``MlflowClient.log_batch``;
nothing here is called from worker threads (MLflow's SQLite pool does not bear concurrent writers).

Parent run: experiment ``lead/<dataset name>``; tags ``dataset``, ``dataset_fingerprint``,
``best_model`` (``tie: a, b`` on an exact tie), ``best_models``, ``zoo_digest``, ``primary_method``,
``flow_run_id``, ``failed_models``; params are the methods' knobs and the bootstrap's; artifacts
``figure.png`` (first) and ``ranking.json``; the experiment's tag ``mlflow.experimentKind`` is
``custom_model_development`` (MLflow 3's classic view, not the GenAI one). Child run per model: tags
``model``, ``arch``, ``weights``, ``status`` (and ``error``); params the model's preprocessing; one metric
per method (its score) plus ``rank_<method>``, ``p_best_<method>``, ``rank_low_<method>``,
``rank_high_<method>``, and its cost ``params``, ``gflops``, ``images_per_s``.

End states: FINISHED (children of failed models FAILED) when the selection is logged; KILLED when the
ranking is stopped (Ctrl-C, SIGTERM: ``Tracker.end_open_runs``) or was killed outright (SIGKILL, a
crash): every run carries the tag ``lead.owner`` (``host:pid:start-time`` of the process that created
it), and the next ranking on the store ends the RUNNING runs whose owner on this host is gone
(``Tracker.end_dead_runs``). Runs owned by another host are left as they are.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from lead.selection import Selection

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
#: A tracking server that is down must not hold a ranking for minutes: MLflow's own defaults (7 retries,
#: backoff factor 2, 120 s timeout) wait about 4 minutes before giving up. Ours give up in seconds;
#: set the variables to override.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

#: MLflow 3 shows an experiment in its GenAI view (traces, an assistant panel) or its classic model-training
#: view (runs table, metrics, artifacts) by the experiment tag ``mlflow.experimentKind``; without it the UI
#: infers the kind. Ours are model selections: the classic view (values from the UI's ExperimentKind enum).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: The selection's figure, logged first and named to sort before ``ranking.json``.
FIGURE_ARTIFACT = "figure.png"

#: Limits of one ``log_batch`` request (MLflow REST API).
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_TAG_LENGTH = 5000
#: Tag naming the process that created a run (lead.processes.owner_tag).
OWNER_TAG = "lead.owner"
#: Seconds an interrupted ranking waits for the store's lock to mark its runs KILLED (the next ranking
#: on the store does it otherwise).
END_LOCK_TIMEOUT_S = 5.0


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass(frozen=True)
class RunRecord:
    """What to log on one run: tags, params and metrics (name -> value)."""

    name: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]


def ui_command(tracking_uri: str) -> str:
    """The shell command that opens the MLflow UI on this tracking store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


#: MLflow 3.17's UI shows an experiment in the GenAI or the model-training view by its ``workflowType``
#: (URL parameter, then remembered in the browser), GenAI by default, whatever the experiment's tag says; the
#: links we print open the model-training view (the runs table with the metrics, the artifacts).
UI_VIEW = "workflowType=machine_learning"


#: The experiment tag holding the runs table's view that ``lead`` links to (MLflow's shared views: the UI
#: reads ``mlflow.sharedViewState.<key>`` when the URL has ``viewStateShareKey=<key>``).
VIEW_KEY = "lead"


def runs_view_state(methods: list[str], expanded_run_id: str | None = None) -> str:
    """The runs table's view as MLflow's UI stores it (JSON): the methods' scores, P(best) and the cost as
    columns, newest first, the latest selection's children expanded."""
    columns = [f"metrics.`{m}`" for m in methods] + [f"metrics.`{k}`" for k in ("p_best", "params", "gflops", "images_per_s")]
    return json.dumps({"selectedColumns": columns, "orderByKey": "attributes.start_time", "orderByAsc": False,
                       "runsExpanded": {expanded_run_id: True} if expanded_run_id else {}})


def runs_url(tracking_uri: str, experiment_id: str) -> str:
    """The MLflow UI's runs table of an experiment, in the model-training view, with lead's columns."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&{UI_VIEW}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str, path: str = "") -> str:
    """The MLflow UI's page of a run (``path``: e.g. ``artifacts/figure.png``), in the model-training view."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}{'/' + path if path else ''}?{UI_VIEW}"


class Tracker:
    """A small service object around ``MlflowClient`` for one tracking URI.

    For a SQLite store every operation holds an inter-process file lock (``<db>.lock``): two rankings
    on one store at once otherwise race on the database's first migration (seen: "Online migration
    expected to match one row") and on SQLite's single writer. A tracking server needs no lock.

    Args:
        tracking_uri: e.g. ``sqlite:////abs/store/mlflow.db`` or ``http://host:5000``.
        artifact_root: folder for new experiments' artifacts (a local store); None lets the server decide.
    """

    #: Seconds to wait for another process's MLflow write before giving up.
    LOCK_TIMEOUT_S = 300
    #: Runs this process created and has not ended: run id -> the Tracker that created it.
    _open: dict[str, Tracker] = {}

    def __init__(self, tracking_uri: str, artifact_root: Path | None = None):
        from filelock import FileLock
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self._lock = contextlib.nullcontext()
        if tracking_uri.startswith("sqlite:///"):
            db = Path(tracking_uri.removeprefix("sqlite:///"))
            db.parent.mkdir(parents=True, exist_ok=True)
            self._lock = FileLock(f"{db}.lock", timeout=self.LOCK_TIMEOUT_S)
        with self._lock:
            self.client = MlflowClient(tracking_uri=tracking_uri)
            self.client.search_experiments(max_results=1)  # creates and migrates a new database, under the lock

    def ensure_experiment(self, name: str) -> str:
        """Id of experiment ``name``, created (with an artifact location under ``artifact_root``) if new."""
        from mlflow.exceptions import MlflowException

        with self._lock:
            return self._ensure_experiment(name, MlflowException)

    def _ensure_experiment(self, name: str, MlflowException) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made before the tag was set
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return exp.experiment_id
        location = None
        if self.artifact_root is not None:
            location = (Path(self.artifact_root) / quote(name, safe="")).resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location,
                                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:  # created meanwhile by a concurrent ranking
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def start_parent(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        """Create the parent run of a selection (status RUNNING, tag ``lead.owner``); returns its run id.
        First ends, as KILLED, the runs of earlier rankings on this host whose process is gone."""
        with self._lock:
            try:
                self._end_dead_runs()
            except Exception as err:  # housekeeping: it must not cost this ranking its tracking
                logging.getLogger(__name__).warning("could not end the runs of stopped rankings: %s", err)
            run = self._create_run(experiment_id, run_name, tags)
        return run.info.run_id

    def _create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]):
        from lead.processes import owner_tag

        run = self.client.create_run(experiment_id, run_name=run_name, tags={**tags, OWNER_TAG: owner_tag()})
        Tracker._open[run.info.run_id] = self
        return run

    def _end(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)
        Tracker._open.pop(run_id, None)

    @classmethod
    def end_open_runs(cls, status: str = "KILLED", lock_timeout_s: float = END_LOCK_TIMEOUT_S) -> list[str]:
        """End every run this process created and has not ended with ``status`` (children before their
        parent); returns their ids. Waits at most ``lock_timeout_s`` for the store's lock."""
        ended = []
        for run_id, tracker in reversed(list(cls._open.items())):  # newest first: children before their parent
            acquire = getattr(tracker._lock, "acquire", None)
            with acquire(timeout=lock_timeout_s) if acquire else contextlib.nullcontext():
                tracker._end(run_id, status)
            ended.append(run_id)
        return ended

    def end_dead_runs(self) -> list[str]:
        """End as KILLED the RUNNING runs of this store whose creating process (tag ``lead.owner``) ran on
        this host and is gone (a SIGKILL, a crash, a power cut); returns their ids."""
        with self._lock:
            return self._end_dead_runs()

    def _end_dead_runs(self) -> list[str]:
        from lead.processes import owner_alive

        experiments = [e.experiment_id for e in self.client.search_experiments()]
        if not experiments:
            return []
        ended = []
        for run in self.client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=1000):
            owner = run.data.tags.get(OWNER_TAG)
            if owner and owner_alive(owner) is False:
                self.client.set_terminated(run.info.run_id, status="KILLED")
                ended.append(run.info.run_id)
        return ended

    def log_artifacts(self, run_id: str, paths: list[Path], texts: dict[str, str] | None = None) -> None:
        """Upload files and small texts (name -> content) as artifacts of ``run_id``."""
        with self._lock:
            for p in paths:
                self.client.log_artifact(run_id, str(p))
            for name, text in (texts or {}).items():
                self.client.log_text(run_id, text, name)

    def log(self, run_id: str, record: RunRecord) -> None:
        """Log tags, params and metrics of ``record`` in as few ``log_batch`` calls as the limits allow."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        tags = [RunTag(k, str(v)[:MAX_TAG_LENGTH]) for k, v in record.tags.items()]
        params = [Param(k, str(v)) for k, v in record.params.items()]
        metrics = [Metric(k, float(v), now, 0) for k, v in record.metrics.items()]
        self.client.log_batch(run_id, tags=tags)
        for chunk in _chunks(params, MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=chunk)
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=chunk)

    def log_selection(
        self, experiment_id: str, parent_id: str, parent: RunRecord, children: list[RunRecord], artifact: dict | None = None,
        figure: Path | None = None,
    ) -> dict[str, str]:
        """Log a whole selection: the parent's record, one child run per model, the figure (a PNG file, logged
        first as ``figure.png``) and the ranking artifact.

        Returns {model name: child run id}. Marks every run FINISHED (children of failed models FAILED);
        if logging fails part-way, the runs created so far are marked FAILED (as far as the store lets).
        """
        with self._lock:
            try:
                return self._log_selection(experiment_id, parent_id, parent, children, artifact, figure)
            except Exception:
                for run_id in [r for r in reversed(list(Tracker._open)) if Tracker._open[r] is self]:
                    with contextlib.suppress(Exception):
                        self._end(run_id, "FAILED")
                raise

    def _log_selection(self, experiment_id, parent_id, parent, children, artifact, figure=None) -> dict[str, str]:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        child_ids = {}
        for child in children:
            run = self._create_run(experiment_id, child.name, {MLFLOW_PARENT_RUN_ID: parent_id, **child.tags})
            self.log(run.info.run_id, RunRecord(child.name, {}, child.params, child.metrics))
            status = "FAILED" if child.tags.get("status") == "failed" else "FINISHED"
            self._end(run.info.run_id, status)
            child_ids[child.name] = run.info.run_id
        self.log(parent_id, parent)
        methods = [m for m in parent.params.get("methods", "").split(",") if m]
        self.client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}", runs_view_state(methods, parent_id))
        if figure is not None:
            import shutil
            import tempfile

            with tempfile.TemporaryDirectory(prefix="lead-figure-") as tmp:
                named = Path(tmp) / FIGURE_ARTIFACT
                shutil.copyfile(figure, named)
                self.client.log_artifact(parent_id, str(named))
        if artifact is not None:
            self.client.log_text(parent_id, json.dumps(artifact, indent=2, default=str), "ranking.json")
        self._end(parent_id, "FINISHED")
        return child_ids



def selection_records(sel: Selection, preprocessing: dict[str, dict], params: dict[str, dict],
                      flow_run_id: str) -> tuple[RunRecord, list[RunRecord]]:
    """The MLflow records of a selection: the parent run's (tags, the methods and their knobs as params,
    the best score) and one child run's per model (tags, preprocessing params, a metric per method and
    ``rank_<method>``). ``preprocessing``: ``{model: its preprocessing}``; ``params``: ``{method: knobs}``."""
    from lead import __version__

    children = [
        RunRecord(
            name=m.model,
            tags={"model": m.model, "arch": m.arch, "weights": m.weights, "status": m.status,
                  **({"error": m.error} if m.error else {}),
                  **({"extraction": m.extraction.status} if m.extraction else {}),
                  **({f"extraction.{k}": v for k, v in (("worker", m.extraction.worker), ("device", m.extraction.device),
                                                        ("start", m.extraction.start), ("end", m.extraction.end)) if v}
                     if m.extraction else {})},
            params={f"preprocessing.{k}": json.dumps(v) for k, v in preprocessing[m.model].items()},
            metrics={**m.scores, **{f"rank_{k}": v for k, v in m.ranks.items()},
                     **{f"{field}_{k}": u[field] for k, u in m.uncertainty.items() for field in ("p_best", "rank_low", "rank_high")},
                     **({"p_best": m.uncertainty[sel.primary_method]["p_best"]} if sel.primary_method in m.uncertainty else {}),
                     **{k: v for k, v in m.cost.items() if k != "device" and v is not None}},
        )
        for m in sel.models
    ]
    primary, ok, auto = sel.primary_method, sel.ok_models, sel.auto
    skipped = [x["sample_id"] for x in sel.skipped_images]
    parent = RunRecord(
        name=sel.dataset,
        tags={"best_model": sel.best_model, "best_models": ",".join(sel.best_models), "zoo_digest": sel.zoo_digest,
              "primary_method": primary, "flow_run_id": flow_run_id, "lead_run_id": sel.run_id,
              "n_models": str(len(sel.models)), "failed_models": ",".join(sel.failed_models), "lead_version": __version__,
              **({"excluded_models": ",".join(sel.excluded_models)} if sel.excluded_models else {}),
              "skipped_images": str(len(skipped)),
              **({"skipped_list": ", ".join(skipped)} if skipped else {}),
              **({"auto_method": primary, "auto_evidence": json.dumps(auto)} if auto else {})},
        params={"methods": ",".join(sel.methods), "n_samples": str(sel.n_read), "n_classes": str(sel.n_classes),
                **({"auto_min_datasets": str(auto["min_datasets"])} if auto else {}),
                **({"bootstrap": str(sel.bootstrap["resamples"]), "bootstrap_seed": str(sel.bootstrap["seed"]),
                    "bootstrap_budget_s": str(sel.bootstrap["budget_s"])} if sel.bootstrap else {}),
                **{k: str(v) for k, v in (sel.limits or {}).items() if v is not None},
                **{f"{meth}.{k}": v if isinstance(v, str) else json.dumps(v) for meth, p in params.items() for k, v in p.items()}},
        # the best model's scores and P(best) under the children's metric names: one set of columns in the UI
        metrics={f"best_{primary}": ok[0].scores[primary], **ok[0].scores,
                 **({"p_best": ok[0].uncertainty[primary]["p_best"]} if primary in ok[0].uncertainty else {})}
        if ok else {},
    )
    return parent, children

#: Tags that name what a fine-tuning run trained on: ``lead outcomes import`` matches runs by them.
DATASET_TAG = "lead.dataset"
MODEL_TAG = "lead.model"


def fine_tuning_results(tracking_uri: str, experiment: str, metric: str, dataset: str | None = None,
                        model: str | None = None, filter_string: str = "") -> tuple[list[dict], list[str]]:
    """The final value of ``metric`` in every finished run of ``experiment`` (fine-tuning runs tracked in MLflow).

    A run's dataset and model come from ``dataset``/``model`` when given, else from its tags
    :data:`DATASET_TAG` and :data:`MODEL_TAG`.

    Returns:
        ``(found, skipped)``: found is one ``{"run_id", "dataset", "model", "value", "run_name"}`` per
        usable run (the metric's last logged value); skipped is one line per run left out, with why.
    Raises:
        InputError: no such experiment, or an invalid ``filter_string`` (MLflow's message).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from lead.errors import InputError

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments(max_results=200))
        raise InputError(f"outcomes import: experiment must exist in {tracking_uri}; got {experiment!r} "
                         f"(experiments: {', '.join(names) or 'none'}). Check --experiment and --tracking-uri.")
    try:
        runs = client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=50000,
                                  order_by=["attributes.start_time ASC"])
    except MlflowException as err:
        raise InputError(f"outcomes import: --filter must be an MLflow search filter; got {filter_string!r} ({err}).") from err
    found, skipped = [], []
    for run in runs:
        rid = run.info.run_id
        name = run.info.run_name or rid
        d = dataset or run.data.tags.get(DATASET_TAG)
        m = model or run.data.tags.get(MODEL_TAG)
        if run.info.status != "FINISHED":
            skipped.append(f"{name} ({rid}): status {run.info.status}, not FINISHED")
        elif metric not in run.data.metrics:
            skipped.append(f"{name} ({rid}): no metric {metric!r}")
        elif not d or not m:
            skipped.append(f"{name} ({rid}): no tag {DATASET_TAG if not d else MODEL_TAG} (or pass --dataset/--model)")
        else:
            found.append({"run_id": rid, "run_name": name, "dataset": d, "model": m, "value": run.data.metrics[metric]})
    return found, skipped
