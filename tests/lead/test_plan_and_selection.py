"""The plan (one resolution of a ranking's inputs) and the Selection (one typed result)."""

from __future__ import annotations

import json
import pickle

import pytest

from lead.config import Settings
from lead.errors import DatasetError, InputError
from lead.plan import MethodRequest, parse_request, plan_ranking
from lead.scoring import DEFAULT_METHODS, get_method
from lead.selection import Extraction, MlflowInfo, ModelResult, Selection


def test_explicit_and_default_methods_are_told_apart_once():
    assert parse_request(None) == parse_request("default") == MethodRequest(tuple(DEFAULT_METHODS), default=True)
    explicit = parse_request(",".join(DEFAULT_METHODS))
    assert explicit == MethodRequest(tuple(DEFAULT_METHODS)) and not explicit.default  # taken as written
    assert parse_request("auto").auto and parse_request(["auto"]).auto
    assert parse_request("gbc,lead,gbc").ids == ("gbc", "lead")
    small = [m for m in DEFAULT_METHODS if get_method(m).min_samples > 10]
    assert set(parse_request(None).on(10).dropped) == set(small)  # the default leaves out what cannot score
    assert parse_request(",".join(DEFAULT_METHODS)).on(10).dropped == {}  # an explicit list keeps them
    p = parse_request("gbc,lead").on(24)
    assert (p.methods, p.primary) == (("gbc", "lead"), "lead") and p.fallback.startswith("gbc needs at least 64")
    with pytest.raises(InputError, match="unknown|must"):
        parse_request("nosuchmethod")
    with pytest.raises(InputError, match="auto"):
        parse_request("auto").on(10)


def test_the_plan_resolves_dataset_zoo_methods_and_settings(tiny_dataset, tmp_path):
    from tests.conftest import lite_entry, write_zoo

    zoo = str(write_zoo(tmp_path / "zoo.yaml", [lite_entry(0), lite_entry(1)]))
    settings = Settings.from_env(store=str(tmp_path / "s"))
    plan = plan_ranking(str(tiny_dataset), zoo, "lead,logme", settings=settings, datasets_dir=tmp_path / "s" / "datasets",
                        dataset_name="animals")
    assert plan.settings is settings and plan.dataset.name == "animals" and plan.dataset.n_samples == 24
    assert len(plan.dataset.fingerprint) == 64 and plan.n_classes == 4 and plan.dataset_root == str(tiny_dataset)
    assert [s.name for s in plan.specs] == ["efficientnet_lite0.in1k", "efficientnet_lite1.in1k"]
    assert plan.methods.methods == ("lead", "logme") and plan.methods.primary == "lead" and plan.auto is None
    pickle.dumps(plan)  # plain values only
    # a plan's dataset reference plans again without hashing, to the same values
    again = plan_ranking(plan.dataset, zoo, None, settings=settings, datasets_dir=tmp_path)
    assert again.dataset == plan.dataset and again.request.default
    # auto: resolved from the track record it is given (none yet: the default methods)
    auto = plan_ranking(str(tiny_dataset), zoo, "auto", settings=settings, datasets_dir=tmp_path,
                        track_record=lambda: ({}, {}))
    assert auto.auto is not None and auto.request.default
    with pytest.raises(InputError):
        plan_ranking(str(tiny_dataset), zoo, "auto", settings=settings, datasets_dir=tmp_path)
    with pytest.raises(InputError):
        plan_ranking(str(tiny_dataset), zoo, "lead,nosuch", settings=settings, datasets_dir=tmp_path)
    with pytest.raises(DatasetError):
        plan_ranking(str(tmp_path / "missing"), zoo, None, settings=settings, datasets_dir=tmp_path)


def _selection() -> Selection:
    return Selection(
        run_id="r", dataset="d", dataset_path="/x", dataset_fingerprint="f" * 64, n_samples=9, n_listed=10, n_classes=2,
        methods=["lead", "logme"], primary_method="lead", dropped_methods={}, fallback="", n_read=9, best_model="a",
        best_models=["a"],
        models=[ModelResult("a", "arch", "timm:a", extraction=Extraction("cached", "/p", 0.0), scores={"lead": 1.0,
                            "logme": 2.0}, ranks={"lead": 1, "logme": 1}, scoring="cached"),
                ModelResult("b", "arch", "timm:b", status="failed", error="ModelLoadError: no")],
        rankings_path="/r.parquet", zoo_digest="z", skipped_images=[{"sample_id": "c/1.png", "error": "bad"}],
        seconds=1.5, mlflow=MlflowInfo("sqlite:///m.db", "mlflow ui", "1", "run", "http://u"), auto=None,
    )


def test_a_selection_round_trips_through_json():
    sel = _selection()
    doc = json.loads(sel.to_json())
    assert Selection.from_json(sel.to_json()) == sel and Selection.from_dict(doc).to_dict() == doc
    assert pickle.loads(pickle.dumps(sel)) == sel
    # the document keeps the keys lead rank --json always printed: scoring/method_errors only when present
    assert list(doc["models"][0]) == ["model", "arch", "weights", "status", "error", "extraction", "scores", "ranks", "scoring",
                                      "uncertainty", "cost", "pareto"]  # the last three: issue #16
    assert "scoring" not in doc["models"][1] and doc["models"][1]["extraction"] is None
    assert doc["mlflow"] == {"tracking_uri": "sqlite:///m.db", "ui_command": "mlflow ui", "experiment_id": "1",
                             "run_id": "run", "url": "http://u"}
    assert sel.failed_models == ["b"] and [m.model for m in sel.ok_models] == ["a"] and sel.model("b").error
    assert sel.scores_by_method() == {"lead": {"a": 1.0}, "logme": {"a": 2.0}}


def test_storage_writes_rows_and_records_from_a_selection():
    from datetime import UTC, datetime

    from storage.rankings import selection_rows
    from storage.tracking import selection_records

    sel = _selection()
    rows = selection_rows(sel, created_at=datetime.now(UTC), params_json="{}", mlflow_run_id="run", flow_run_id="")
    assert [(r["model"], r["method"], r["status"], r["rank"]) for r in rows] == [
        ("a", "lead", "ok", 1), ("a", "logme", "ok", 1), ("b", "lead", "failed", None), ("b", "logme", "failed", None)]
    parent, children = selection_records(sel, {"a": {"size": 32}, "b": {"size": 32}}, {"lead": {"k": 1}}, flow_run_id="")
    assert parent.tags["best_model"] == "a" and parent.tags["failed_models"] == "b" and parent.tags["skipped_list"] == "c/1.png"
    # the parent also carries the best model's scores under the children's names (issue #16: one set of columns)
    assert parent.params["lead.k"] == "1" and parent.metrics == {"best_lead": 1.0, "lead": 1.0, "logme": 2.0}
    assert children[0].metrics == {"lead": 1.0, "logme": 2.0, "rank_lead": 1, "rank_logme": 1}
    assert children[1].tags["status"] == "failed" and children[0].params == {"preprocessing.size": "32"}
