"""``lead bench`` on a tiny suite built from the demo data (real images, real EfficientNet-Lite weights).

The accuracies in this suite are invented for the test; the weighted tau the harness reports is checked
against scipy's, recomputed from the scores stored in the rankings table.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from lead.benchmark import load_suite
from lead.errors import InputError
from lead.evaluation import weighted_tau
from storage.bench import BENCH_SCHEMA
from storage.history import query
from tests.conftest import lite_entry, write_image_folder, write_zoo

pytestmark = pytest.mark.usefixtures("prefect_harness")

ACCS = {
    "animals": {"efficientnet_lite0.in1k": 70.0, "efficientnet_lite1.in1k": 75.0, "efficientnet_lite2.in1k": 80.0},
    "digits": {"efficientnet_lite0.in1k": 90.0, "efficientnet_lite1.in1k": 88.0, "efficientnet_lite2.in1k": 92.0},
    "missing": {"efficientnet_lite0.in1k": 1.0, "efficientnet_lite1.in1k": 2.0},
}


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory, tiny_dataset):
    from lead.data import mnist_5k

    root = tmp_path_factory.mktemp("suite")
    images, labels = mnist_5k()
    labels = np.asarray(labels)
    keep = np.concatenate([np.nonzero(labels == d)[0][:6] for d in ("1", "4", "7", "9")])
    write_image_folder(root / "digits", images[keep], list(labels[keep]))
    write_zoo(root / "zoo.yaml", [lite_entry(i) for i in range(3)])
    doc = {
        "name": "tiny",
        "description": "invented accuracies, for the test only",
        "zoo": "zoo.yaml",
        "datasets": {"animals": str(tiny_dataset), "digits": "digits", "missing": "no/such/folder"},
        "accuracies": ACCS,
    }
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def result(suite_file, tmp_path_factory):
    from flows.bench import bench

    store = tmp_path_factory.mktemp("bench-store")
    return store, bench(suite=str(suite_file), methods=["lead"], store=str(store))


def test_weighted_tau_equals_scipy_on_the_stored_scores(result):
    store, res = result
    for dataset in ("animals", "digits"):
        rows = query(store, f"SELECT model, score FROM rankings WHERE dataset = '{dataset}' AND method = 'lead'").to_pylist()
        models = sorted(r["model"] for r in rows)
        scores = {r["model"]: r["score"] for r in rows}
        expected = weighted_tau([scores[m] for m in models], [ACCS[dataset][m] for m in models])
        (row,) = [r for r in res["rows"] if r["dataset"] == dataset and r["method"] == "lead"]
        assert row["weighted_tau"] == pytest.approx(expected, rel=1e-12)
        assert row["n_models"] == 3
    assert res["mean_weighted_tau"]["lead"] == pytest.approx(
        np.mean([r["weighted_tau"] for r in res["rows"] if r["dataset"] != "missing" and r["method"] == "lead"]))


def test_a_dataset_that_cannot_be_ranked_is_reported_not_fatal(result):
    _, res = result
    assert set(res["failures"]) == {"missing"} and "must be an ImageFolder directory" in res["failures"]["missing"]
    (row,) = [r for r in res["rows"] if r["dataset"] == "missing" and r["method"] == "lead"]
    assert math.isnan(row["weighted_tau"]) and row["n_models"] == 0


def test_parquet_table_figure_and_markdown(result):
    _, res = result
    table = pq.read_table(res["table_path"])
    assert table.schema.equals(BENCH_SCHEMA, check_metadata=False)
    assert table.num_rows == 6 and set(table.column("dataset").to_pylist()) == {"animals", "digits", "missing"}
    assert set(table.column("method").to_pylist()) == {"lead", "prior:params"}  # the static prior rides along
    png = open(res["plot_path"], "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "| **mean** |" in res["markdown"] and "| missing | n/a |" in res["markdown"]


def test_mlflow_bench_run_has_metrics_and_artifacts(result):
    from mlflow import MlflowClient

    store, res = result
    client = MlflowClient(tracking_uri=res["mlflow"]["tracking_uri"])
    run = client.get_run(res["mlflow"]["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "lead-bench/tiny"
    tau = {r["dataset"]: r["weighted_tau"] for r in res["rows"] if r["method"] == "lead"}
    assert run.data.metrics["tau.lead.animals"] == pytest.approx(tau["animals"])
    assert run.data.metrics["mean_tau.lead"] == pytest.approx(res["mean_weighted_tau"]["lead"])
    assert "tau.lead.missing" not in run.data.metrics
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"ranking.json", "weighted_tau.md"} <= names
    assert any(n.endswith(".png") for n in names) and any(n.endswith(".parquet") for n in names)


def test_cli_prints_the_weighted_tau_table(result, suite_file):
    from flows.cli import app

    store, res = result
    out = CliRunner().invoke(app, ["bench", "--suite", str(suite_file), "--store", str(store)], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "Weighted tau on suite tiny" in out.output
    assert f"{res['mean_weighted_tau']['lead']:.3f}" in out.output
    assert "missing not ranked" in out.output and "figure:" in out.output


def test_builtin_suites_carry_the_published_table():
    sup = load_suite("sfda-supervised")
    assert sup.accuracies["cifar10"]["resnet152"] == 97.53 and len(sup.accuracies["cifar10"]) == 11
    assert sup.published["logme"]["cifar10"] == 0.852
    ssl = load_suite("sfda-self-supervised")
    assert set(ssl.accuracies["dtd"]) == {"byol", "deepcluster-v2", "infomin", "insdis", "moco-v1", "moco-v2", "pcl-v1",
                                          "pcl-v2", "sela-v2", "simclr-v1", "simclr-v2", "swav"}
    assert "voc2007" not in sup.datasets


def test_suite_errors(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text(json.dumps({"name": "x", "zoo": "efficientnet-lite", "datasets": {"a": "p"}, "accuracies": {"a": {"m": 1}}}))
    with pytest.raises(InputError, match="accuracies of dataset 'a' must list at least 2 models"):
        load_suite(bad)
    with pytest.raises(InputError, match="must be a YAML file or a built-in suite"):
        load_suite(tmp_path / "none.yaml")
