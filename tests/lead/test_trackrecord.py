"""The pure track record (lead/trackrecord.py): outcome checks, reconciliation, the suite made of a store's
selections and outcomes, and the choice of ``--method auto``; every value worked by hand."""

from __future__ import annotations

import math

import pytest

from lead.errors import InputError
from lead.evaluation import weighted_tau
from lead.scoring.ranking import plan_methods
from lead.trackrecord import (
    Outcome,
    Recorded,
    check_outcome,
    choose_method,
    history_suite,
    is_auto,
    pick_metric,
    reconcile,
    resolve_auto,
)

RANKED = {"pets": {"a", "b", "c"}}


def row(dataset, method, tau):
    return {"dataset": dataset, "method": method, "weighted_tau": tau}


def test_check_outcome_accepts_percent_and_fraction():
    assert check_outcome(Outcome("pets", "a", 93.1), RANKED).accuracy == 93.1
    assert check_outcome(Outcome("pets", "a", 0.931, metric="val_acc", unit="fraction"), RANKED).accuracy == pytest.approx(93.1)
    assert check_outcome(Outcome("pets", "a", 0), RANKED).value == 0.0 and check_outcome(Outcome("pets", "a", 100), RANKED).value == 100.0


@pytest.mark.parametrize("outcome, message", [
    (Outcome("pets", "a", 101.0),
     "outcomes: a on pets: accuracy in percent must be in [0, 100]; got 101.0. Check the value: a percentage cannot exceed 100."),
    (Outcome("pets", "a", -0.5),
     "outcomes: a on pets: accuracy in percent must be in [0, 100]; got -0.5. Pass --unit fraction for a metric in [0, 1]."),
    (Outcome("pets", "a", 93.1, metric="val_acc", unit="fraction"),
     "outcomes: a on pets: val_acc in fraction must be in [0, 1]; got 93.1. Pass --unit percent for a percentage."),
    (Outcome("pets", "a", math.nan), "outcomes: a on pets: accuracy in percent must be in [0, 100]; got nan."),
    (Outcome("pets", "a", 50.0, unit="permille"), "outcomes: a on pets: unit must be one of percent, fraction; got 'permille'."),
    (Outcome("cars", "a", 50.0), "outcomes: dataset must be one this store has ranked; got 'cars' (ranked: pets). "
                                 "Rank it first with `lead rank`, or check --store and the dataset's name."),
    (Outcome("pets", "z", 50.0), "outcomes: model must be one ranked on 'pets'; got 'z' (ranked there: a, b, c). "
                                 "Use the zoo's model id."),
])
def test_check_outcome_refuses_bad_outcomes_with_one_clear_line(outcome, message):
    with pytest.raises(InputError) as err:
        check_outcome(outcome, RANKED)
    assert str(err.value).startswith(message)


def test_reconcile_repeats_conflicts_and_replace():
    current = {("pets", "a", "accuracy"): Recorded(93.1, "2026-11-30 09:00:00", "cli")}
    same = Outcome("pets", "a", 0.931, unit="fraction")
    assert reconcile([same], current).repeats == [same] and reconcile([same], current).write == []
    new = Outcome("pets", "a", 92.0)
    refused = reconcile([new], current)
    assert refused.write == [] and refused.conflicts == [
        "a on pets (accuracy): recorded 93.1 on 2026-11-30 09:00:00 (cli); got 92. Pass --replace to record the new value instead."]
    replaced = reconcile([new], current, replace=True)
    assert replaced.write == [new] and replaced.replaced == {("pets", "a", "accuracy"): 93.1} and not replaced.conflicts
    b1, b2 = Outcome("pets", "b", 80.0, source="mlflow:r1"), Outcome("pets", "b", 81.0, source="mlflow:r2")
    clash = reconcile([b1, b2, Outcome("pets", "b", 82.0)], {}, replace=True)
    assert clash.write == [] and clash.conflicts == [
        "b on pets (accuracy): this batch gives two values, 80 (mlflow:r1) and 81 (mlflow:r2); record one (e.g. their mean) "
        "or filter the runs."]
    twice = reconcile([b1, Outcome("pets", "b", 80.0, source="mlflow:r3")], {})
    assert twice.write == [b1] and len(twice.repeats) == 1


def test_pick_metric_most_models_then_accuracy_then_name():
    assert pick_metric({"val_acc": {"a": 1, "b": 2}, "accuracy": {"a": 1}}) == "val_acc"
    assert pick_metric({"val_acc": {"a": 1}, "accuracy": {"b": 1}}) == "accuracy"
    assert pick_metric({"zz": {"a": 1}, "top1": {"b": 1}}) == "top1"


def test_history_suite_keeps_datasets_with_three_scored_models():
    scores = {"pets": {"lead": {"a": 3.0, "b": 2.0, "c": 1.0}}, "cars": {"lead": {"a": 1.0, "b": 2.0, "c": math.nan}}}
    outcomes = {"pets": {"accuracy": {"a": 90.0, "b": 80.0, "c": 85.0, "x": 99.0}},
                "cars": {"accuracy": {"a": 50.0, "b": 60.0, "c": 70.0}}}
    suite, left = history_suite(scores, outcomes)
    assert suite.datasets == {"pets": "metric accuracy"}
    assert suite.accuracies == {"pets": {"a": 90.0, "b": 80.0, "c": 85.0}}
    assert left == {"cars": "outcomes for 2 scored model(s) in metric accuracy; the track record needs at least 3"}
    assert history_suite(scores, {}) == (None, {})


def test_choose_method_best_mean_over_enough_datasets():
    rows = [row("d1", "lead", 0.9), row("d2", "lead", 0.5), row("d3", "lead", 0.4),
            row("d1", "logme", 0.6), row("d2", "logme", 0.7), row("d3", "logme", 0.8),
            row("d1", "gbc", 1.0), row("d1", "prior:params", 0.99), row("d2", "prior:params", 0.99),
            row("d3", "prior:params", 0.99)]
    c = choose_method(rows, min_datasets=3, registered=["lead", "logme", "gbc"])
    assert c.method == "logme" and c.methods == ["logme", "lead", "gbc"]
    assert c.means == {"lead": pytest.approx(0.6), "logme": pytest.approx(0.7)}
    assert c.reason == ("logme has the best track record here: mean weighted tau 0.700 over 3 dataset(s) (d1, d2, d3); "
                        "then lead 0.600")
    assert c.evidence()["datasets"]["gbc"] == ["d1"]
    tie = choose_method([row("d1", "a", 0.5), row("d1", "b", 0.5)], 1, registered=["a", "b"], preferred=["b"])
    assert tie.method == "b"


def test_choose_method_falls_back_below_min_datasets_and_says_why():
    c = choose_method([row("d1", "lead", 0.9), row("d2", "lead", 0.8), row("d2", "logme", math.nan)], min_datasets=3,
                      registered=["lead", "logme"])
    assert c.method is None and c.methods is None
    assert c.reason == ("the track record covers 2 dataset(s) (d1, d2) and no method was measured on 3 yet (most: 2); "
                        "auto needs at least 3 (LEAD_AUTO_MIN_DATASETS): ranking by the default methods")
    with pytest.raises(InputError, match="auto: min_datasets must be at least 1; got 0"):
        choose_method([], min_datasets=0)


def test_resolve_auto_from_scores_and_outcomes():
    accs = {"a": 90.0, "b": 80.0, "c": 70.0}
    scores = {d: {"logme": {"a": 3.0, "b": 2.0, "c": 1.0}, "lead": {"a": 1.0, "b": 3.0, "c": 2.0}} for d in ("d1", "d2", "d3")}
    outcomes = {d: {"accuracy": accs} for d in ("d1", "d2", "d3")}
    c = resolve_auto(scores, outcomes)
    lead_tau = weighted_tau([1.0, 3.0, 2.0], [90.0, 80.0, 70.0])
    assert c.method == "logme" and c.means == {"logme": 1.0, "lead": pytest.approx(lead_tau)}
    assert c.methods == ["logme", "lead"]
    few = resolve_auto(scores, {"d1": {"accuracy": accs}})
    assert few.methods is None and plan_methods(few.methods, 100).primary == plan_methods(None, 100).primary
    assert is_auto("auto") and is_auto(["auto"]) and not is_auto("auto,lead") and not is_auto(None)
