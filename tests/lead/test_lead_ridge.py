"""LEAD's closed-form initial state (issue #18) and its one parameter object (issue #14 item 4).

The ridge probe is checked against scikit-learn's Ridge fitted fold by fold, and the temperature against
scipy's scalar minimiser on the same likelihood; the parameters against the registry and MLflow's view."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from lead.errors import InputError
from lead.scoring import LeadParams, get_method, lead_details, lead_score
from lead.scoring.lead import (
    TEMPERATURE_BOUNDS,
    fit_temperature,
    logreg_initial_state,
    ridge_initial_state,
    stratified_folds,
)


def _data(n=150, d=20, k=3, seed=0, sep=1.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    return np.maximum(sep * rng.standard_normal((k, d))[y] + rng.standard_normal((n, d)), 0.0) + 0.5, y


def _sklearn_oof(x, y, k, alpha, seed=0):
    """Out-of-fold ridge outputs, fold by fold with sklearn's Ridge (intercept unpenalised)."""
    from sklearn.linear_model import Ridge

    n_folds = int(min(5, np.bincount(y).min()))
    folds = stratified_folds(y, k, n_folds, seed)
    out = np.empty((len(y), k))
    for f in range(n_folds):
        tr = folds != f
        xc = x[tr] - x[tr].mean(axis=0)
        lam = alpha * np.trace(xc.T @ xc) / x.shape[1]
        out[~tr] = Ridge(alpha=lam, solver="cholesky").fit(x[tr], np.eye(k)[y[tr]]).predict(x[~tr])
    return out


def _scipy_temperature(r, y):
    nll = lambda log_tau: -log_softmax(np.exp(log_tau) * r, axis=1)[np.arange(len(y)), y].sum()  # noqa: E731
    return float(np.exp(minimize_scalar(nll, bounds=(-10, 8), method="bounded", options={"xatol": 1e-10}).x))


@pytest.mark.parametrize("shape", [(150, 20), (40, 90)])  # D < N, and D > N (fitted in the samples' span)
@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_the_ridge_probe_equals_sklearn_ridge_per_fold_then_temperature_scaling(shape, alpha):
    n, d = shape
    x, y = _data(n, d, k=3, seed=1)
    r = _sklearn_oof(x, y, 3, alpha)
    tau = _scipy_temperature(r, y)
    expected = softmax(tau * r, axis=1)
    got = ridge_initial_state(x, y, 3, seed=0, alpha=alpha)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # gathering rows through `rows` (the score's fast path) gives the same bits' worth of result
    perm = np.random.default_rng(0).permutation(n)
    inverse = np.argsort(perm)
    np.testing.assert_allclose(ridge_initial_state(x[perm], y, 3, seed=0, alpha=alpha, rows=inverse), got, rtol=1e-12, atol=1e-14)


def test_the_temperature_is_the_maximum_likelihood_one():
    rng = np.random.default_rng(3)
    y = np.arange(300) % 4
    r = np.eye(4)[y] * 0.6 + 0.4 * rng.standard_normal((300, 4))
    assert fit_temperature(r, y) == pytest.approx(_scipy_temperature(r, y), rel=1e-6)


def test_separable_outputs_stop_at_a_finite_temperature_with_p0_near_one():
    y = np.arange(60) % 3
    r = np.eye(3)[y] + 0.01 * np.random.default_rng(0).standard_normal((60, 3))  # every argmax right
    tau = fit_temperature(r, y)
    assert 1.0 < tau <= TEMPERATURE_BOUNDS[1]
    p = softmax(tau * r, axis=1)[np.arange(60), y]
    assert -np.log(p).mean() < 1e-7
    # constant outputs carry no information: the fit returns at once and P0 is uniform
    assert np.allclose(softmax(fit_temperature(np.zeros((60, 3)), y) * np.zeros((60, 3)), axis=1), 1 / 3)


def _canonical(x, y):
    return np.lexsort((y, x @ np.random.default_rng(12345).standard_normal(x.shape[1])))


def test_the_default_is_the_ridge_probe_and_the_logistic_one_stays_reachable():
    x, y = _data()
    assert get_method("lead").params["initial"] == "ridge"
    a = lead_details(x, y)
    order = _canonical(x, y)  # the score's canonical sample order (a positive scale does not change it)
    np.testing.assert_allclose(a.p0[order], ridge_initial_state(x[order], y[order], 3, seed=0), atol=1e-12)
    old = lead_details(x, y, initial="logreg")
    assert old.params.initial == "logreg" and old.score != a.score
    # the logistic path is issue #12's, unchanged: logreg_initial_state on the globally scaled features
    scaled = x / np.sqrt(((x - x.mean(axis=0)) ** 2).mean())
    order = _canonical(scaled, y)
    np.testing.assert_allclose(old.p0[order], logreg_initial_state(scaled[order], y[order], 3, seed=0), atol=1e-12)


def test_the_ridge_default_ranks_informative_features_above_noise_and_is_order_free():
    x, y = _data(sep=2.0)
    noise = np.random.default_rng(5).standard_normal(x.shape)
    assert lead_score(x, y) > lead_score(noise, y) + 0.1
    perm = np.random.default_rng(1).permutation(len(y))
    assert lead_score(x[perm], y[perm]) == pytest.approx(lead_score(x, y), rel=1e-12)
    assert lead_score(x * 1e4, y) == pytest.approx(lead_score(x, y), rel=1e-9)


def test_lead_params_is_the_one_definition_of_the_knobs():
    defaults = LeadParams()
    assert get_method("lead").params == defaults.as_params()
    assert list(defaults.as_params()) == [f.name for f in dataclasses.fields(LeadParams)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        defaults.t = 2.0  # type: ignore[misc]
    x, y = _data()
    p = LeadParams(initial="logreg", logreg_c=10.0)
    assert lead_score(x, y, p) == lead_score(x, y, initial="logreg", logreg_c=10.0)
    assert lead_score(x, y, p, t=2.0) == lead_score(x, y, initial="logreg", logreg_c=10.0, t=2.0)
    assert LeadParams(head=[8, 4]).head == (8, 4)
    # the registry's call path passes the params as keywords
    assert get_method("lead")(features=x, labels=y) == lead_score(x, y)


@pytest.mark.parametrize("knobs, match", [
    ({"ridge_alpha": 0.0}, "ridge_alpha must be a finite float > 0"),
    ({"ridge_alpha": True}, "ridge_alpha must be a finite float > 0"),
    ({"softmax": "yes"}, "softmax must be True or False"),
    ({"seed": -1}, "seed must be an int >= 0"),
    ({"alpha": 1.0}, r"unknown knob\(s\) \['alpha'\]; the knobs are"),
])
def test_bad_params_raise_clear_errors(knobs, match):
    x, y = _data()
    with pytest.raises(InputError, match=match):
        lead_score(x, y, **knobs)


def test_a_class_with_one_sample_is_refused_by_the_out_of_fold_probe():
    x, y = _data()
    with pytest.raises(InputError, match=r"at least 2 samples for the out-of-fold initial state; got 1 for \[7\]"):
        lead_score(x[:31], np.r_[y[:30], 7])


@pytest.mark.parametrize("knobs", [{}, {"initial": "logreg"}, {"loss": "ce"}, {"softmax": True}, {"t": 3.0}])
def test_the_score_alone_equals_the_detailed_evaluation(knobs):
    # lead_score skips the N x K evolved state (only the true class's entry enters step 5)
    x, y = _data()
    assert lead_score(x, y, **knobs) == lead_details(x, y, **knobs).score


def test_the_blocked_probe_equals_one_block_and_sklearn(monkeypatch):
    # the probe gathers rows, and sums each (fold, class) run, in blocks of BLOCK_VALUES // D rows; blocks of a
    # few rows cut runs across blocks, and the result must not change (beyond round-off)
    import lead.scoring.lead as lead_module

    x, y = _data(150, 20, k=3, seed=2)
    whole = ridge_initial_state(x, y, 3, seed=0)
    monkeypatch.setattr(lead_module, "BLOCK_VALUES", 7 * 20)  # 7 rows a block
    np.testing.assert_allclose(ridge_initial_state(x, y, 3, seed=0), whole, rtol=1e-10, atol=1e-12)
    r = _sklearn_oof(x, y, 3, 1.0)
    np.testing.assert_allclose(ridge_initial_state(x, y, 3, seed=0), softmax(_scipy_temperature(r, y) * r, axis=1), atol=1e-6)


def test_run_sums_by_block_equal_the_direct_sums_with_empty_runs():
    from lead.scoring.lead import _add_run_sums

    rng = np.random.default_rng(1)
    for _ in range(50):
        n, runs = int(rng.integers(1, 200)), int(rng.integers(1, 12))
        starts = np.r_[0, np.sort(rng.integers(0, n + 1, runs - 1)), n]  # repeated starts: empty runs
        z = rng.standard_normal((n, 4))
        got = np.zeros((runs, 4))
        step = int(rng.integers(1, 40))
        for a in range(0, n, step):
            _add_run_sums(z[a:a + step], a, starts, got)
        want = np.array([z[starts[r]:starts[r + 1]].sum(axis=0) for r in range(runs)])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_the_canonical_order_is_the_lexsort_also_with_tied_projections():
    from lead.scoring.lead import _canonical_order

    rng = np.random.default_rng(4)
    proj = rng.standard_normal(300)
    codes = rng.integers(0, 5, 300)
    np.testing.assert_array_equal(_canonical_order(proj, codes), np.lexsort((codes, proj)))
    proj[::3] = proj[0]  # identical rows project alike: ties broken by class, then position
    np.testing.assert_array_equal(_canonical_order(proj, codes), np.lexsort((codes, proj)))


def test_a_nan_in_float32_features_is_caught_by_the_probe_pass():
    x, y = _data()
    x = x.astype(np.float32)
    x[7, 3] = np.inf
    with pytest.raises(InputError, match=r"features must be finite; got NaN or Inf in 1 of 150 rows \(first: row 7\)"):
        lead_score(x, y)


def test_float32_features_use_the_float32_probe_and_score_as_their_float64_values():
    # float32 features (D <= N): the probe's copy, fold Gram matrices and out-of-fold products are float32 BLAS
    # (docs/performance.md, target 3, fourth round); the score stays within float32 precision of the float64 one,
    # keeps the caller's order out of it, and separable inputs (score ~ -1e-10) keep their leading digits
    for sep, rel in [(1.0, 1e-5), (4.0, 1e-4)]:
        x, y = _data(600, 40, k=5, seed=3, sep=sep)
        x32 = x.astype(np.float32)
        got, want = lead_score(x32, y), lead_score(x32.astype(np.float64), y)
        assert got == pytest.approx(want, rel=rel)
        perm = np.random.default_rng(2).permutation(len(y))
        assert lead_score(x32[perm], y[perm]) == got
    d = lead_details(x32, y)
    np.testing.assert_allclose(d.p0, lead_details(x32.astype(np.float64), y).p0, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("dtype, shape", [(np.float64, (300, 20)), (np.float32, (300, 20)), (np.float64, (40, 90)),
                                          (np.float32, (40, 90))])
def test_the_probe_takes_the_squared_norms_and_the_global_scale_from_its_blocks(dtype, shape, monkeypatch):
    import lead.scoring.lead as lead_module
    from lead.scoring._validate import global_scale

    x, y = _data(*shape, k=3, seed=4)
    x = x.astype(dtype)
    monkeypatch.setattr(lead_module, "BLOCK_VALUES", 7 * shape[1])  # several blocks
    rows = np.random.default_rng(0).permutation(shape[0])
    _, sq, var = lead_module._ridge_probe(x, y[rows], 3, seed=0, alpha=1.0, rows=rows, mean=None, norms=True)
    x64 = x.astype(np.float64)[rows]
    norms = np.einsum("ij,ij->i", x64, x64)
    want = [norms[y[rows] == c].mean() for c in range(3)]  # each class's mean squared norm
    np.testing.assert_allclose(sq, want, rtol=1e-6 if dtype == np.float32 else 1e-12)
    assert var == pytest.approx(global_scale(x64) ** 2, rel=1e-6 if dtype == np.float32 else 1e-12)
