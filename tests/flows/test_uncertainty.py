"""Uncertainty, cost and pictures through the rank-zoo flow: real Prefect, MLflow, Parquet, DuckDB, timm.

Two zoo entries with identical weights (EfficientNet-Lite0 under two names) must share P(best) equally;
the figure must be the parent run's first artifact; the cost must be timm's own counts; --max-params must
leave a model out with its reason.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from lead.cost import spec_cost
from lead.zoo import load_zoo
from storage.history import query
from tests.conftest import lite_entry, write_zoo

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def twins(tmp_path_factory, tiny_dataset):
    from flows.rank_zoo import rank_zoo

    root = tmp_path_factory.mktemp("twins")
    zoo = write_zoo(root / "zoo.yaml", [{**lite_entry(0), "name": "twin-a"}, {**lite_entry(0), "name": "twin-b"},
                                        lite_entry(2)])
    store = root / "store"
    sel = rank_zoo(dataset=str(tiny_dataset), zoo=str(zoo), store=str(store), bootstrap=60, max_params=6e6,
                   bootstrap_budget=120.0)  # LogME's 60 resamples of 24 images take ~0.2 s; never cut short here
    return store, zoo, sel


def test_identical_models_share_p_best_and_the_excluded_one_says_why(twins):
    store, _, sel = twins
    a, b, lite2 = sel.model("twin-a"), sel.model("twin-b"), sel.model("efficientnet_lite2.in1k")
    for method in ("lead", "logme"):
        assert a.uncertainty[method]["p_best"] == b.uncertainty[method]["p_best"] == 0.5
        assert a.uncertainty[method]["tied_with_best"] and a.uncertainty[method]["n_resamples"] == 60
    assert lite2.status == "excluded" and lite2.extraction is None and sel.excluded_models == [lite2.model]
    assert lite2.error == "excluded: 6,092,072 parameters, over --max-params 6,000,000"
    rows = pq.read_table(sel.rankings_path).to_pylist()
    assert {(r["model"], r["status"]) for r in rows} == {("twin-a", "ok"), ("twin-b", "ok"),
                                                        ("efficientnet_lite2.in1k", "excluded")}
    assert not list((store / "logits").glob("*/model=efficientnet_lite2*"))  # never extracted


def test_rankings_columns_and_cost_equal_timms_counts(twins):
    store, zoo, sel = twins
    spec = next(s for s in load_zoo(str(zoo)) if s.name == "twin-a")
    counted = spec_cost(spec)
    got = query(store, "SELECT model, method, p_best, rank_low, rank_high, tied_with_best, params, gflops, "
                       "images_per_s, pareto FROM rankings WHERE status = 'ok' ORDER BY model, method").to_pylist()
    assert len(got) == 4
    for r in got:
        assert r["p_best"] == 0.5 and (r["rank_low"], r["rank_high"]) == (1, 1) and r["tied_with_best"] is True
        assert r["params"] == counted.params == 4_652_008
        assert r["gflops"] == pytest.approx(counted.flops / 1e9, rel=1e-12)
        assert r["images_per_s"] > 0 and r["pareto"] is True  # equal points are both on the front


def test_figure_is_the_first_artifact_of_the_parent_run_and_linked_from_prefect(twins):
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    store, _, sel = twins
    client = MlflowClient(sel.mlflow.tracking_uri)
    experiment = client.get_experiment(sel.mlflow.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment.tags["mlflow.sharedViewState.lead"])
    assert {"metrics.`lead`", "metrics.`logme`", "metrics.`p_best`"} <= set(view["selectedColumns"])
    assert "viewStateShareKey=lead" in sel.mlflow.runs_url and "workflowType=machine_learning" in sel.mlflow.url
    parent = sel.mlflow.run_id
    artifacts = [a.path for a in client.list_artifacts(parent)]
    assert artifacts[0] == "figure.png" and "ranking.json" in artifacts
    png = client.download_artifacts(parent, "figure.png", str(store / "dl"))
    assert open(png, "rb").read()[:8] == b"\x89PNG\r\n\x1a\n"
    assert open(png, "rb").read() == open(sel.figure_path, "rb").read()
    run = client.get_run(parent)
    assert run.data.params["bootstrap"] == "60" and run.data.params["max_params"] == "6000000.0"
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    twin = next(c for c in children if c.data.tags["model"] == "twin-a")
    assert twin.data.metrics["p_best_lead"] == 0.5 and twin.data.metrics["p_best"] == 0.5
    assert twin.data.metrics["params"] == 4_652_008
    with get_client(sync_client=True) as prefect:
        arts = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["selection-animals"])))
    mine = [a for a in arts if sel.mlflow.url in str(a.data)]
    assert mine and mine[0].type == "markdown" and "figure.png" in mine[0].data and "| twin-a |" in mine[0].data


def test_history_plot_and_the_cli_table(twins, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    store, _, sel = twins
    out = tmp_path / "history.png"
    res = CliRunner().invoke(app, ["history", "--store", str(store), "--plot", "--dataset", "animals", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    res = CliRunner().invoke(app, ["history", "--store", str(store), "--plot"])
    assert res.exit_code == 2 and "--dataset must name the dataset" in res.output
    import contextlib
    import io

    from flows.cli.rank import _print_selection

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        _print_selection(sel)
    text = buf.getvalue()
    assert "P(best)" in text and "GFLOPs" in text and "4.7 M" in text and "0.50" in text
    assert "excluded: 6,092,072 parameters, over --max-params 6,000,000" in text
    assert json.loads(sel.to_json())["bootstrap"]["resamples"] == 60
