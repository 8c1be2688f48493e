"""Outcomes end to end on the committed suite ``offline-fewshot``: its stored features ranked into a store by
``rank_models`` (the one ranking path) with LogME and LEEP (the cheap methods; LEAD costs minutes on 2
cores), its accuracies recorded as outcomes; ``lead bench --history`` reproduces the suite's committed
table (weighted_tau.json) for those methods; ``lead rank --method auto`` ranks by the best of them once 3
datasets have outcomes and falls back before; bad outcomes get one line each; MLflow runs import; the
nightly run logs the track record when outcomes change. Real DuckDB, Parquet, MLflow on SQLite, Prefect."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import flows.bench  # noqa: F401  Prefect is imported here, not inside a CliRunner call (its log handler would keep that stream)
from flows.cli import app
from lead.benchmark import BUILTIN_SUITES_DIR, evaluate, load_suite
from lead.scoring.priors import prior_scores
from lead.scoring.ranking import plan_methods, rank_models
from lead.trackrecord import Outcome
from lead.zoo import load_zoo
from storage.history import query
from storage.logits import read_logits
from storage.outcomes import digest, outcome_files, record
from storage.rankings import write_rankings
from storage.tracking import Tracker
from tests.conftest import lite_entry, write_zoo

SUITE = load_suite("offline-fewshot")
METHODS = ["logme", "leep"]
TABLE = json.loads((BUILTIN_SUITES_DIR / "offline-fewshot" / "weighted_tau.json").read_text())["weighted_tau"]
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def rank_stored(store, dataset: str, i: int, methods=METHODS) -> None:
    """One selection of ``dataset`` from the suite's stored features, written to the rankings table."""
    files = SUITE.stored_features(dataset)
    data = {m: read_logits(p) for m, p in files.items()}
    labels = next(iter(data.values())).labels
    ranking = rank_models({m: (d.features, d.logits) for m, d in data.items()}, labels, methods)
    run_id = f"run-{dataset}"
    rows = [{"run_id": run_id, "created_at": T0 + timedelta(hours=i), "dataset": dataset,
             "dataset_fingerprint": f"fp-{dataset}", "model": model, "method": method,
             "score": ranking.scores[method][model], "rank": ranking.ranks_by[method].get(model), "n_samples": len(labels),
             "n_classes": 10, "mlflow_run_id": "", "flow_run_id": "", "params_json": json.dumps({"methods": list(methods)}),
             "status": "ok", "error": ""} for model in files for method in ranking.methods]
    write_rankings(store, f"fp-{dataset}", run_id, rows)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A store with one selection per dataset of the suite and a migrated MLflow database (built once)."""
    store = tmp_path_factory.mktemp("template") / "store"
    for i, dataset in enumerate(SUITE.datasets):
        rank_stored(store, dataset, i)
    Tracker(f"sqlite:///{store}/mlflow.db")
    return store


@pytest.fixture
def store(template, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(template, dst)
    return dst


def suite_outcomes(datasets) -> list[Outcome]:
    return [Outcome(d, m, a, note="offline-fewshot", source="suite") for d in datasets for m, a in SUITE.accuracies[d].items()]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], terminal_width=200)


def test_history_reproduces_the_suite_table(store):
    res = record(store, suite_outcomes(SUITE.datasets))
    assert len(res.written) == 40 and len(outcome_files(store)) == 1
    out = cli("bench", "--history", "--zoo", SUITE.path, "--store", store, "--json")
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    assert got["suite"] == "track-record" and got["datasets"] == sorted(SUITE.datasets) and got["methods"] == METHODS
    tau = {(r["dataset"], r["method"]): r["weighted_tau"] for r in got["rows"]}
    for method in METHODS:
        for dataset in SUITE.datasets:
            assert tau[(dataset, method)] == pytest.approx(TABLE[method][dataset], abs=1e-9), (dataset, method)
        assert got["mean_weighted_tau"][method] == pytest.approx(sum(TABLE[method].values()) / 4, abs=1e-9)
    assert got["priors"] == ["prior:params", "prior:source-accuracy"]
    specs = {spec.name: spec for spec in load_zoo(str(SUITE.path))}
    priors = evaluate(SUITE, {d: prior_scores(list(SUITE.accuracies[d]), specs) for d in SUITE.datasets}, got["priors"])
    for r in priors:  # the same prior rows as `lead bench --suite offline-fewshot`
        assert tau[(r["dataset"], r["method"])] == pytest.approx(r["weighted_tau"], abs=1e-12)
    assert got["auto"]["method"] == "logme" and got["auto"]["reason"].startswith("logme has the best track record here")
    from mlflow import MlflowClient

    run = MlflowClient(got["mlflow"]["tracking_uri"]).get_run(got["mlflow"]["run_id"])
    assert run.data.tags["outcomes_digest"] == digest(store)
    assert run.data.metrics["mean_tau.logme"] == pytest.approx(got["mean_weighted_tau"]["logme"])
    printed = cli("bench", "--history", "--store", store)
    assert printed.exit_code == 0 and "Weighted tau on suite track-record" in printed.stdout
    assert f"{got['mean_weighted_tau']['logme']:.3f}" in printed.stdout and "pass --zoo" in printed.stdout
    sql = cli("history", "--store", store, "--sql", "SELECT count(*) AS n, count(DISTINCT dataset) AS d FROM outcomes", "--json")
    assert json.loads(sql.stdout) == {"n": 40, "d": 4}


def test_outcomes_add_bad_values_conflicts_repeats_and_replace(store):
    empty = cli("bench", "--history", "--store", store)
    assert empty.exit_code == 2 and empty.output == (
        "error: bench --history: the track record must have a dataset with outcomes for at least 3 models its latest "
        "selection scored; got no outcomes. Record them with `lead outcomes add` or `lead outcomes import`.\n")
    base = ("outcomes", "add", "--store", store, "--dataset", "mnist", "--model", "efficientnet_lite0.in1k")
    ok = cli(*base, "--accuracy", 89.0, "--note", "10 epochs")
    assert ok.exit_code == 0 and "recorded efficientnet_lite0.in1k on mnist: accuracy = 89 (percent)" in ok.stdout
    bad = {
        ("--accuracy", 101): "error: outcomes add: efficientnet_lite0.in1k on mnist: accuracy in percent must be in [0, 100]; got 101.0.",
        ("--accuracy", 93.1, "--metric", "val_acc", "--unit", "fraction"):
            "error: outcomes add: efficientnet_lite0.in1k on mnist: val_acc in fraction must be in [0, 1]; got 93.1. "
            "Pass --unit percent for a percentage.",
        ("--accuracy", 88.0): "error: outcomes add: efficientnet_lite0.in1k on mnist (accuracy): recorded 89 on ",
    }
    for extra, message in bad.items():
        out = cli(*base, *extra)
        assert out.exit_code == 2 and out.output.startswith(message) and out.output.count("\n") == 1, out.output
    unknown = cli("outcomes", "add", "--store", store, "--dataset", "mnist", "--model", "resnet50", "--accuracy", 80)
    assert unknown.exit_code == 2 and unknown.output.startswith(
        "error: outcomes add: model must be one ranked on 'mnist'; got 'resnet50' (ranked there: convnext_atto.fmnist-60k,")
    never = cli("outcomes", "add", "--store", store, "--dataset", "pets", "--model", "resnet50", "--accuracy", 80)
    assert never.exit_code == 2 and never.output.startswith(
        "error: outcomes add: dataset must be one this store has ranked; got 'pets' (ranked: animal-mnist, fashion-mnist, mnist, uci-digits).")
    repeat = cli(*base, "--accuracy", 0.89, "--unit", "fraction")
    assert repeat.exit_code == 0 and "already recorded" in repeat.stdout and len(outcome_files(store)) == 1
    replaced = cli(*base, "--accuracy", 88.0, "--replace")
    assert replaced.exit_code == 0 and "replacing 89" in replaced.stdout and len(outcome_files(store)) == 2
    assert query(store, "SELECT accuracy, replaced FROM outcomes").to_pylist() == [{"accuracy": 88.0, "replaced": 89.0}]
    assert query(store, "SELECT count(*) AS n FROM outcomes_log").to_pylist() == [{"n": 2}]
    by_fp = cli("outcomes", "add", "--store", store, "--dataset", "fp-mnist", "--model", "resnet10t.fmnist-30k", "--accuracy", 85.9)
    assert by_fp.exit_code == 0 and "on mnist" in by_fp.stdout
    table = pq.read_table(outcome_files(store)[-1])
    assert table.column("dataset_fingerprint").to_pylist() == ["fp-mnist"]


def test_outcomes_import_from_mlflow_runs(store):
    from mlflow import MlflowClient

    uri = f"sqlite:///{store}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("finetune", artifact_location=(store / "ft").as_uri())
    runs = {"efficientnet_lite0.in1k": [0.89, 0.89], "efficientnet_lite1.in1k": [0.892, 0.892], "resnet10t.fmnist-30k": [0.5, 0.8593]}
    for model, values in runs.items():
        for seed, value in enumerate(values):
            run = client.create_run(exp, tags={"lead.dataset": "mnist", "lead.model": model, "seed": str(seed)})
            client.log_metric(run.info.run_id, "val_acc", 0.1, step=0)
            client.log_metric(run.info.run_id, "val_acc", value, step=1)
            client.set_terminated(run.info.run_id)
    untagged = client.create_run(exp, run_name="no-tags", tags={"seed": "1"})
    client.log_metric(untagged.info.run_id, "val_acc", 0.7)
    client.set_terminated(untagged.info.run_id)
    base = ("outcomes", "import", "--store", store, "--experiment", "finetune", "--metric", "val_acc", "--unit", "fraction")
    clash = cli(*base)
    assert clash.exit_code == 2 and "resnet10t.fmnist-30k on mnist (val_acc): this batch gives two values, 50 (mlflow:" in clash.output
    assert outcome_files(store) == []
    out = cli(*base, "--filter", "tags.seed = '1'")
    assert out.exit_code == 0, out.output
    assert "skipped run no-tags" in out.output and "recorded efficientnet_lite0.in1k on mnist: val_acc = 0.89 (fraction)" in out.output
    again = cli(*base, "--filter", "tags.seed = '1'")
    assert again.exit_code == 0 and again.stdout.count("already recorded") == 3 and len(outcome_files(store)) == 1
    rows = query(store, "SELECT model, metric, value, unit, accuracy FROM outcomes ORDER BY model").to_pylist()
    assert rows == [
        {"model": "efficientnet_lite0.in1k", "metric": "val_acc", "value": 0.89, "unit": "fraction", "accuracy": pytest.approx(89.0)},
        {"model": "efficientnet_lite1.in1k", "metric": "val_acc", "value": 0.892, "unit": "fraction", "accuracy": pytest.approx(89.2)},
        {"model": "resnet10t.fmnist-30k", "metric": "val_acc", "value": 0.8593, "unit": "fraction", "accuracy": pytest.approx(85.93)},
    ]
    missing = cli("outcomes", "import", "--store", store, "--experiment", "nope", "--metric", "val_acc")
    assert missing.exit_code == 2 and missing.output.startswith("error: outcomes import: experiment must exist in ")


@pytest.mark.usefixtures("prefect_harness")
def test_rank_auto_falls_back_then_ranks_by_the_best_track_record(store, tiny_dataset, tmp_path):
    from mlflow import MlflowClient

    zoo = write_zoo(tmp_path / "zoo.yaml", [lite_entry(0)])
    record(store, suite_outcomes(["mnist", "uci-digits"]))
    args = ("rank", "--dataset", tiny_dataset, "--zoo", zoo, "--method", "auto", "--store", store)
    first = cli(*args)
    assert first.exit_code == 0, first.output
    default = plan_methods(None, 24).primary
    assert (f"method auto: ranked by {default}: the track record covers 2 dataset(s) (mnist, uci-digits) and no method "
            "was measured on 3 yet (most: 2); auto needs at least 3 (LEAD_AUTO_MIN_DATASETS): ranking by the default "
            "methods") in first.stdout
    record(store, suite_outcomes(["fashion-mnist"]))
    second = cli(*args, "--json")
    assert second.exit_code == 0, second.output
    sel = json.loads(second.stdout)
    means = {m: sum(TABLE[m][d] for d in ("fashion-mnist", "mnist", "uci-digits")) / 3 for m in METHODS}
    assert sel["primary_method"] == "logme" and sel["methods"] == ["logme", "leep"]
    assert sel["auto"]["mean_weighted_tau"] == {m: round(v, 6) for m, v in means.items()}
    run = MlflowClient(sel["mlflow"]["tracking_uri"]).get_run(sel["mlflow"]["run_id"])
    assert run.data.tags["auto_method"] == "logme" and json.loads(run.data.tags["auto_evidence"])["method"] == "logme"
    assert run.data.params["auto_min_datasets"] == "3"
    stored = query(store, f"SELECT DISTINCT params_json FROM rankings WHERE run_id = '{sel['run_id']}'").to_pylist()
    assert json.loads(stored[0]["params_json"])["auto"]["primary"] == "logme"
    strict = cli(*args, "--auto-min-datasets", 4, "--json")
    assert strict.exit_code == 0 and json.loads(strict.stdout)["auto"]["method"] is None


@pytest.mark.usefixtures("prefect_harness")
def test_nightly_logs_the_track_record_when_outcomes_change(store):
    from mlflow import MlflowClient

    from flows.bench import TRACK_RECORD_EXPERIMENT
    from flows.nightly import nightly_rerank

    record(store, suite_outcomes(SUITE.datasets))
    uri = f"sqlite:///{store}/mlflow.db"
    client = MlflowClient(uri)

    def logged():
        exp = client.get_experiment_by_name(TRACK_RECORD_EXPERIMENT)
        return [] if exp is None else client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])

    assert nightly_rerank(store=str(store), tracking_uri=uri) == {}
    assert len(logged()) == 1 and logged()[0].data.tags["outcomes_digest"] == digest(store)
    nightly_rerank(store=str(store), tracking_uri=uri)
    assert len(logged()) == 1
    record(store, [Outcome("mnist", "lcnet_050.fmnist-6k", 20.0)], replace=True)
    nightly_rerank(store=str(store), tracking_uri=uri)
    assert len(logged()) == 2 and logged()[0].data.tags["outcomes_digest"] == digest(store)

