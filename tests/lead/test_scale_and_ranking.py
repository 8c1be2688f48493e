"""Scale invariance of every score, LEAD's closed-form kernel, rank aggregation, static priors and
``rank_models`` (issue #12): each checked against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lead.errors import InputError
from lead.scoring import DEFAULT_METHODS, METHODS, get_method
from lead.scoring.ensemble import aggregate
from lead.scoring.lead import expected_kernel_diagonal, kernel_diagonal, lead_details, lead_score, logreg_initial_state, random_head
from lead.scoring.ranking import plan_methods, rank_models


def _data(n=200, d=64, k=5, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = np.maximum(rng.standard_normal((k, d))[y] + 1.5 * rng.standard_normal((n, d)), 0.0)  # ReLU-like
    return x, y, rng.standard_normal((n, 20))


@pytest.mark.parametrize("method", [m for m in METHODS if get_method(m).scale_free])
def test_a_scale_free_method_scores_features_times_c_the_same(method):
    x, y, logits = _data()
    m = get_method(method)
    ref = m(features=x, logits=logits, labels=y)
    for c in (1e-3, 0.1, 10.0, 1e3):
        assert m(features=x * c, logits=logits, labels=y) == pytest.approx(ref, rel=1e-6, abs=1e-9), c


@pytest.mark.parametrize("method", [m for m in METHODS if not get_method(m).scale_free])
def test_a_method_marked_scale_dependent_really_is(method):
    # the flag documents the published definition (docs/baselines.md "Scale"); it must not be stale
    x, y, logits = _data()
    m = get_method(method)
    assert m(features=x * 1e-3, labels=y) != pytest.approx(m(features=x * 1e3, labels=y), rel=1e-3)


def test_lead_is_scale_free_only_with_the_global_normalisation():
    x, y, _ = _data()
    assert lead_score(x * 1e-3, y) == pytest.approx(lead_score(x * 1e3, y), rel=1e-9)
    # issue #8's default (logistic initial state on raw features) moved with the units; the ridge probe's
    # penalty is relative to the Gram matrix's own scale, so only the kernel's bias terms remain
    raw = [lead_score(x * c, y, normalize="none", initial="logreg") for c in (0.01, 1.0, 100.0)]
    assert max(raw) - min(raw) > 0.05


def test_the_expected_kernel_is_the_mean_of_many_sampled_heads():
    rng = np.random.default_rng(1)
    z = np.maximum(rng.standard_normal((12, 32)), 0.0) * rng.uniform(0.5, 2.0, (12, 1))
    for widths in ((256,), (128, 256)):
        sampled = np.mean([kernel_diagonal(z, random_head(32, 4, widths, seed=s)) for s in range(400)], axis=0)
        expected = expected_kernel_diagonal(z, 4, widths)
        # K ((D + sum widths) / D ||z||^2 + layers), by hand for one row
        assert expected[0] == pytest.approx(4 * ((32 + sum(widths)) / 32 * float(z[0] @ z[0]) + len(widths) + 1))
        assert np.allclose(sampled, expected, rtol=0.05)


def test_lead_with_the_expected_kernel_is_deterministic_and_close_to_many_heads():
    x, y, _ = _data(n=120)
    a = lead_details(x, y)
    assert lead_details(x, y, seed=7).lambdas == pytest.approx(a.lambdas)  # no random head
    many = lead_details(x, y, kernel="sampled", n_heads=16)
    assert np.allclose(a.lambdas / a.lambdas.mean(), many.lambdas / many.lambdas.mean(), rtol=0.02)


def test_the_logistic_initial_state_in_the_span_of_the_samples_equals_the_full_fit(monkeypatch):
    from sklearn.linear_model import LogisticRegression

    import lead.scoring.lead as lead_module

    monkeypatch.setattr(lead_module, "LOGREG_TOL", 1e-10)  # both fits to convergence
    monkeypatch.setattr(lead_module, "LOGREG_MAX_ITER", 10_000)
    from lead.scoring.lead import stratified_folds

    rng = np.random.default_rng(2)
    n, d, k = 30, 90, 3  # more dimensions than samples: fitted in the samples' span
    y = np.arange(n) % k
    x = rng.standard_normal((k, d))[y] * 0.3 + rng.standard_normal((n, d))
    p0 = logreg_initial_state(x, y, k, seed=0, c=1.0)
    folds = stratified_folds(y, k, 5, 0)
    full = np.empty((n, k))
    for f in range(5):
        clf = LogisticRegression(C=1.0, max_iter=10_000, tol=1e-10).fit(x[folds != f], y[folds != f])
        full[folds == f] = clf.predict_proba(x[folds == f])
    assert np.abs(p0 - full).max() < 1e-5


def test_mean_rank_and_mean_z_aggregation_by_hand():
    scores = {"a": {"m1": 3.0, "m2": 1.0, "m3": 2.0}, "b": {"m1": 10.0, "m2": 30.0, "m3": 20.0}}
    # ranks (1 = worst): a: m1 3, m2 1, m3 2; b: m1 1, m2 3, m3 2 -> mean / 3
    assert aggregate(scores, how="rank") == pytest.approx({"m1": 2 / 3, "m2": 2 / 3, "m3": 2 / 3})
    z = aggregate({"a": {"m1": 1.0, "m2": 3.0}, "b": {"m1": 5.0, "m2": 5.0}}, how="z")
    assert z == pytest.approx({"m1": -0.5, "m2": 0.5})  # b has no spread: contributes 0
    ties = aggregate({"a": {"m1": 1.0, "m2": 1.0, "m3": 0.0}}, how="rank")
    assert ties == pytest.approx({"m1": 2.5 / 3, "m2": 2.5 / 3, "m3": 1 / 3})
    failed = aggregate({"a": {"m1": 1.0, "m2": 2.0}, "b": {"m1": math.nan, "m2": 0.0}}, how="rank")
    assert failed == pytest.approx({"m1": 0.5, "m2": 1.0})  # b failed on m1: left out for the whole zoo
    with pytest.raises(InputError, match="how must be one of"):
        aggregate(scores, how="median")


def test_priors_count_the_parameters_timm_counts():
    import timm

    from lead.scoring.priors import prior_scores
    from lead.zoo import ModelSpec

    specs = {
        "a": ModelSpec("a", "resnet10t", "timm:x", (32, 32), (0.5,) * 3, (0.5,) * 3, source_accuracy=70.0),
        "b": ModelSpec("b", "lcnet_050", "timm:x", (32, 32), (0.5,) * 3, (0.5,) * 3, source_accuracy=60.0, params=123),
    }
    got = prior_scores(["a", "b"], specs)
    assert got["prior:params"] == {"a": float(sum(p.numel() for p in timm.create_model("resnet10t").parameters())), "b": 123.0}
    assert got["prior:source-accuracy"] == {"a": 70.0, "b": 60.0}
    specs["b"] = ModelSpec("b", "lcnet_050", "timm:x", (32, 32), (0.5,) * 3, (0.5,) * 3)
    assert "prior:source-accuracy" not in prior_scores(["a", "b"], specs)  # only when every model has it


def test_rank_models_applies_the_same_rules_as_the_flow():
    x, y, logits = _data(n=80)
    rng = np.random.default_rng(3)
    arrays = {"good": (x, logits), "noise": (rng.standard_normal(x.shape), None), "same": (x.copy(), logits)}
    r = rank_models(arrays, y, methods="lead,leep")
    assert r.primary == "lead" and r.methods == ("lead", "leep")
    assert r.scores["lead"]["good"] == lead_score(x, y)
    assert r.ranks == {"good": 1, "same": 1, "noise": 3} and r.best == ("good", "same")  # exact tie shares rank 1
    assert math.isnan(r.scores["leep"]["noise"]) and "no classifier head" in r.errors["leep"]["noise"]
    assert r.ranks_by["leep"] == {"good": 1, "same": 1}
    # the default on a dataset too small for a default method leaves it out, saying why
    small = plan_methods(None, 20)
    assert small.primary in DEFAULT_METHODS and all(n >= 0 for n in [len(small.methods)])
    assert all(get_method(m).min_samples <= 20 for m in small.methods)
    assert all("needs at least" in why for why in small.dropped.values())
    # an explicit list whose first method cannot score it ranks by the next one that can
    p = plan_methods("gbc,logme", 20)
    assert p.primary == "logme" and p.methods == ("gbc", "logme") and "gbc needs at least 64" in p.fallback
    same = rank_models({"good": [x, logits], "noise": arrays["noise"][0], "same": (x.copy(), logits)}, y, methods="lead,leep")
    assert same.scores == r.scores or all(  # a list pair and a bare features array are accepted
        (math.isnan(a) and math.isnan(b)) or a == b for m in r.scores for a, b in zip(r.scores[m].values(), same.scores[m].values()))
    with pytest.raises(InputError, match="one row per label"):
        rank_models({"a": (x[:10], None)}, y)
    with pytest.raises(InputError, match="method must be one of"):
        rank_models(arrays, y, methods="nope")


def test_rank_models_default_matches_the_methods_called_one_by_one():
    x, y, logits = _data(n=100, d=96)
    arrays = {"a": (x, logits), "b": (x[:, :70], logits)}
    r = rank_models(arrays, y)
    plan = plan_methods(None, len(y))
    assert r.primary == plan.primary
    for m in plan.computed:
        for model, (f, lg) in arrays.items():
            assert r.scores[m][model] == pytest.approx(get_method(m)(features=f, logits=lg, labels=y), rel=1e-12)
