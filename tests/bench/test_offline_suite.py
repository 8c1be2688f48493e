"""The committed suites with stored features (``offline-fewshot``, ``offline-broad``): ``lead bench``
reproduces the weighted-tau table of docs/benchmarks.md (stored by benchmarks/select_default.py in each
suite folder) for every registered method.

The default run reproduces two targets of each suite through the real CLI and flow (every method
included); the full tables are the ``slow`` tests (``pytest -m slow``)."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from lead.benchmark import BUILTIN_SUITES_DIR, load_suite
from lead.scoring import METHODS, get_method

pytestmark = pytest.mark.usefixtures("prefect_harness")

SUITES = [s for s in ("offline-fewshot", "offline-broad") if (BUILTIN_SUITES_DIR / s / "weighted_tau.json").is_file()]


def expected(suite: str) -> dict:
    return json.loads((BUILTIN_SUITES_DIR / suite / "weighted_tau.json").read_text())


def test_both_suites_are_committed():
    assert SUITES == ["offline-fewshot", "offline-broad"]


@pytest.mark.parametrize("suite", SUITES)
def test_the_committed_suite_is_complete_and_small(suite):
    s = load_suite(suite)
    assert len(s.datasets) >= {"offline-fewshot": 4, "offline-broad": 8}[suite]
    for d in s.datasets:
        assert len(s.accuracies[d]) >= {"offline-fewshot": 10, "offline-broad": 16}[suite]
        assert set(s.stored_features(d)) == set(s.accuracies[d])
    size = sum(p.stat().st_size for p in (BUILTIN_SUITES_DIR / suite).rglob("*") if p.is_file())
    assert size < 40 * 2**20


@pytest.mark.parametrize("suite", SUITES)
def test_the_lead_defaults_are_the_ones_the_table_was_made_with(suite):
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in get_method("lead").params.items()}
    assert params == expected(suite)["lead_params"]


def _reproduce(suite: str, datasets: list[str], tmp_path):
    from flows.cli import app

    doc = yaml.safe_load((BUILTIN_SUITES_DIR / f"{suite}.yaml").read_text())
    doc["features"] = str(BUILTIN_SUITES_DIR / doc["features"])
    doc["datasets"] = {d: doc["datasets"][d] for d in datasets}
    doc["accuracies"] = {d: doc["accuracies"][d] for d in datasets}
    path = tmp_path / f"{suite}-part.yaml"
    path.write_text(yaml.safe_dump(doc))
    res = CliRunner().invoke(app, ["bench", "--suite", str(path), "--method", "all", "--json"],
                             env={"LEAD_STORE": str(tmp_path / "store")})
    assert res.exit_code == 0, res.output
    got = {(r["dataset"], r["method"]): r["weighted_tau"] for r in json.loads(res.stdout)["rows"]}
    table = expected(suite)["weighted_tau"]
    for method in METHODS:
        for dataset in datasets:
            value = table[method][dataset]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                assert math.isnan(got[(dataset, method)]), (dataset, method)
            else:
                assert got[(dataset, method)] == pytest.approx(value, abs=1e-6), (dataset, method)
    return got


@pytest.mark.parametrize("suite", SUITES)
def test_lead_bench_reproduces_two_targets_of_the_documented_table(suite, tmp_path):
    datasets = list(load_suite(suite).datasets)
    got = _reproduce(suite, [datasets[0], datasets[-1]], tmp_path)
    assert {m for _, m in got} >= {"prior:params"}  # the static prior rides along as a reference row


@pytest.mark.slow
@pytest.mark.parametrize("suite", SUITES)
def test_lead_bench_reproduces_the_whole_documented_table(suite, tmp_path):
    _reproduce(suite, list(load_suite(suite).datasets), tmp_path)
