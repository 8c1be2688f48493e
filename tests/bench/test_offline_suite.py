"""The committed suite ``offline-fewshot``: ``lead bench`` reproduces the weighted-tau table of
docs/benchmarks.md (stored by benchmarks/lead_study.py in the suite folder), and LEAD's chosen variant
keeps its documented weighted tau."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from lead.benchmark import BUILTIN_SUITES_DIR, load_suite
from lead.scoring import METHODS, get_method

pytestmark = pytest.mark.usefixtures("prefect_harness")

EXPECTED = json.loads((BUILTIN_SUITES_DIR / "offline-fewshot" / "weighted_tau.json").read_text())


def test_the_committed_suite_is_complete_and_small():
    suite = load_suite("offline-fewshot")
    assert len(suite.datasets) >= 4
    for d in suite.datasets:
        assert len(suite.accuracies[d]) >= 10
        assert set(suite.stored_features(d)) == set(suite.accuracies[d])
    size = sum(p.stat().st_size for p in (BUILTIN_SUITES_DIR / "offline-fewshot").rglob("*") if p.is_file())
    assert size < 30 * 2**20


def test_the_lead_defaults_are_the_ones_the_table_was_made_with():
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in get_method("lead").params.items()}
    assert params == EXPECTED["lead_params"]


def test_lead_bench_reproduces_the_documented_table(tmp_path):
    from flows.cli import app

    res = CliRunner().invoke(app, ["bench", "--suite", "offline-fewshot", "--method", "all", "--json"],
                             env={"LEAD_STORE": str(tmp_path / "store")})
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    got = {(r["dataset"], r["method"]): r["weighted_tau"] for r in doc["rows"]}
    for method in METHODS:
        for dataset, value in EXPECTED["weighted_tau"][method].items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                assert math.isnan(got[(dataset, method)])
            else:
                assert got[(dataset, method)] == pytest.approx(value, abs=1e-6), (dataset, method)
