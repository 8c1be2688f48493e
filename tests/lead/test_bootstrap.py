"""The paired bootstrap: resamples, per-sample terms, P(best), rank intervals, ties, the cost bound."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lead.errors import InputError
from lead.scoring import get_method, logme, rank_models, transrate
from lead.scoring.bootstrap import (
    OFF,
    PER_SAMPLE,
    RECOMPUTE,
    TOO_SLOW,
    ResampledScore,
    paired_resamples,
    score_and_resample,
    summarize,
    summarize_ranking,
)

PER_SAMPLE_METHODS = ("lead", "leep", "nce", "nleep", "sfda")


def separated(n_per_class=20, k=4, d=16, gap=4.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per_class)
    return rng.normal(size=(y.size, d)) + gap * np.eye(k, d)[y], y


def test_resamples_are_stratified_reproducible_and_prefix_stable():
    y = np.array(["b"] * 5 + ["a"] * 3 + ["c"] * 7)
    r = paired_resamples(y, 40, seed=3)
    assert r.shape == (40, 15) and r.dtype == np.int64
    for row in r:  # every class keeps its size and draws only its own samples
        assert sorted(y[row]) == sorted(y)
        assert np.array_equal(y[row], y)
    assert np.array_equal(r, paired_resamples(y, 40, seed=3))
    assert not np.array_equal(r, paired_resamples(y, 40, seed=4))
    assert np.array_equal(paired_resamples(y, 7, seed=3), r[:7])  # resample b does not depend on B
    assert len({tuple(row) for row in r}) > 30  # with replacement, and varied
    assert paired_resamples(y, 0).shape == (0, 15)
    with pytest.raises(InputError, match="n_resamples must be an int >= 0; got -1"):
        paired_resamples(y, -1)
    with pytest.raises(InputError, match="seed must be an int >= 0"):
        paired_resamples(y, 3, seed=-2)


@pytest.mark.parametrize("name", PER_SAMPLE_METHODS)
def test_per_sample_terms_are_the_score_and_follow_the_callers_order(name):
    f, y = separated()
    logits = np.random.default_rng(1).normal(size=(y.size, 9)) + 2.0 * np.eye(4, 9)[y]
    method = get_method(name)
    score, terms = method.score_terms(features=f, logits=logits, labels=y)
    assert score == method(features=f, logits=logits, labels=y)
    assert terms.shape == (y.size,) and terms.mean() == pytest.approx(score, rel=1e-12, abs=1e-15)
    perm = np.random.default_rng(2).permutation(y.size)
    _, permuted = method.score_terms(features=f[perm], logits=logits[perm], labels=y[perm])
    np.testing.assert_allclose(permuted, terms[perm], rtol=1e-9, atol=1e-12)


def test_which_methods_resample_per_sample_and_which_recompute():
    assert {m for m in ("lead", "logme", "leep", "nce", "nleep", "hscore", "sfda", "gbc", "transrate")
            if get_method(m).terms is not None} == set(PER_SAMPLE_METHODS)


def test_per_sample_resample_is_the_mean_of_the_drawn_terms():
    f, y = separated()
    r = score_and_resample("lead", features=f, labels=y, n_resamples=30, seed=5)
    _, terms = get_method("lead").score_terms(features=f, labels=y)
    idx = paired_resamples(y, 30, seed=5)
    assert r.mode == PER_SAMPLE and r.resampled.shape == (30,)
    np.testing.assert_allclose(r.resampled, [terms[i].mean() for i in idx], rtol=1e-12)
    back = ResampledScore.from_dict(r.to_dict())  # the JSON-able form a task returns
    assert np.array_equal(back.resampled, r.resampled) and (back.score, back.mode, back.digest) == (r.score, r.mode, r.digest)


def test_recomputed_resample_is_the_method_on_the_drawn_rows():
    f, y = separated(d=100)  # N = 80 < D = 100: LogME from the weighted distinct rows, TransRate on Gram coordinates
    for name, fn in (("logme", logme), ("transrate", transrate), ("hscore", get_method("hscore"))):
        r = score_and_resample(name, features=f, labels=y, n_resamples=6, seed=1, budget_s=600)
        idx = paired_resamples(y, 6, seed=1)
        assert r.mode == RECOMPUTE and r.note == ""
        expected = [fn(features=f[i], labels=y[i]) if name == "hscore" else fn(f[i], y[i]) for i in idx]
        np.testing.assert_allclose(r.resampled, expected, rtol=1e-8)


@pytest.mark.parametrize("shape", [(60, 200), (200, 12)])
def test_logme_resampler_equals_logme_on_the_resampled_rows(shape):
    from lead.scoring.logme import logme_resampler

    n, d = shape
    f, y = separated(n_per_class=n // 4, d=d, gap=1.5)
    fast = logme_resampler(f, y)
    for idx in paired_resamples(y, 4, seed=2):
        assert fast(idx) == pytest.approx(logme(f[idx], y[idx]), rel=1e-9)
    assert fast(np.arange(n)) == pytest.approx(logme(f, y), rel=1e-9)


def test_two_identical_models_share_p_best_and_a_better_one_wins():
    f, y = separated(gap=3.0)
    noise = np.random.default_rng(9).normal(size=f.shape)
    # every resample is needed here: the recompute budget (5 s by default) is not what this test checks
    r = rank_models({"a": f, "b": f.copy()}, y, bootstrap=60, budget_s=300.0)
    for method in ("lead", "logme"):
        u = r.uncertainty[method]
        assert u["a"].p_best == u["b"].p_best == 0.5
        assert u["a"].tied_with_best and u["b"].tied_with_best and (u["a"].rank_low, u["a"].rank_high) == (1, 1)
    r = rank_models({"good": f, "noise": noise}, y, bootstrap=100, budget_s=300.0)
    for method in ("lead", "logme"):
        u = r.uncertainty[method]
        assert u["good"].p_best > 0.99 and u["noise"].p_best < 0.01
        assert (u["noise"].rank_low, u["noise"].rank_high) == (2, 2) and not u["noise"].tied_with_best
        assert u["good"].score_low <= r.scores[method]["good"] <= u["good"].score_high


def test_bootstrap_is_reproducible_by_seed():
    f, y = separated(gap=0.6, seed=4)
    g = f + np.random.default_rng(5).normal(scale=0.8, size=f.shape)  # a close competitor
    one = rank_models({"f": f, "g": g}, y, methods="lead", bootstrap=80, seed=11)
    two = rank_models({"f": f, "g": g}, y, methods="lead", bootstrap=80, seed=11)
    other = rank_models({"f": f, "g": g}, y, methods="lead", bootstrap=80, seed=12)
    assert one.uncertainty == two.uncertainty
    assert 0.0 < one.uncertainty["lead"]["f"].p_best < 1.0  # a real contest, so seeds can differ
    assert one.uncertainty["lead"]["f"].score_low != other.uncertainty["lead"]["f"].score_low
    assert rank_models({"f": f, "g": g}, y, methods="lead").uncertainty == {}  # off by default in Python


def test_summarize_by_hand_with_ties_and_failed_resamples():
    got = summarize({
        "a": np.array([3.0, 1.0, 2.0, 2.0, np.nan]),
        "b": np.array([1.0, 3.0, 2.0, 1.0, 9.0]),
        "c": np.array([2.0, 2.0, 2.0, 0.0, 0.0]),
    })
    # resample 5 has a NaN: left out for everyone. Winners: a; b; a,b,c (a third each); a.
    assert got["a"].n_resamples == 4
    assert got["a"].p_best == pytest.approx((1 + 0 + 1 / 3 + 1) / 4)
    assert got["b"].p_best == pytest.approx((0 + 1 + 1 / 3 + 0) / 4)
    assert got["c"].p_best == pytest.approx((1 / 3) / 4)
    assert sum(u.p_best for u in got.values()) == pytest.approx(1.0)
    # ranks of c: 2, 2, 1, 3 -> the 5% and 95% percentiles (lower/higher) are 1 and 3
    assert (got["c"].rank_low, got["c"].rank_high, got["c"].tied_with_best) == (1, 3, True)
    assert summarize({}) == {} and summarize({"a": np.array([np.nan])}) == {}
    with pytest.raises(InputError, match="interval must be in"):
        summarize({"a": np.ones(3)}, interval=1.5)


def test_exact_ties_share_p_best_equally():
    same = np.linspace(0, 1, 50)
    got = summarize({k: same.copy() for k in "xyz"})
    assert [got[k].p_best for k in "xyz"] == [pytest.approx(1 / 3)] * 3


def test_a_slow_method_lowers_b_or_says_it_is_too_slow():
    f, y = separated()
    ticks = itertools.count(0.0, 0.1)  # one recomputation "takes" 0.1 s: each reading of the clock is 0.1 s later
    r = score_and_resample("logme", features=f, labels=y, n_resamples=200, budget_s=7.0, clock=lambda: next(ticks))
    assert r.mode == RECOMPUTE and r.resampled.size == 70
    assert r.note == ("logme: 70 of 200 resamples (a recomputation takes 0.10 s; the budget is 7 s per model: "
                      "--bootstrap-budget, LEAD_BOOTSTRAP_BUDGET).")
    ticks = itertools.count(0.0, 2.0)  # 2 s each: not even 50 fit in 5 s (judged on the first: over 0.5 s)
    r = score_and_resample("logme", features=f, labels=y, n_resamples=200, budget_s=5.0, clock=lambda: next(ticks))
    assert r.mode == TOO_SLOW and r.resampled.size == 0 and r.score == logme(f, y)
    assert "logme: too slow to resample: one recomputation took 2.00 s, so 200 resamples would take 400 s" in r.note
    # the ranking reports it instead of an interval
    _, notes = summarize_ranking(("logme",), {"logme": {"m": r}})
    assert "too slow to resample" in notes["logme"]
    # one recomputation slowed by a descheduling (0.4 s, then 0.01 s each) does not make the method too slow
    ticks = itertools.chain([0.0, 0.4], itertools.count(0.41, 0.01))
    r = score_and_resample("logme", features=f, labels=y, n_resamples=200, budget_s=5.0, clock=lambda: next(ticks))
    assert r.mode == RECOMPUTE and r.resampled.size == 200 and r.note == ""
    np.testing.assert_allclose(r.resampled, [logme(f[i], y[i]) for i in paired_resamples(y, 200, seed=0)], rtol=1e-9)
    off = score_and_resample("logme", features=f, labels=y, n_resamples=0)
    assert off.mode == OFF and off.resampled.size == 0


def test_ensembles_are_resampled_from_their_members():
    f, y = separated(gap=3.0)
    noise = np.random.default_rng(9).normal(size=f.shape)
    r = rank_models({"good": f, "noise": noise}, y, methods="mean-rank:logme:lead", bootstrap=60)
    u = r.uncertainty["mean-rank:logme:lead"]
    assert u["good"].p_best == 1.0 and u["noise"].rank_low == 2
    assert set(r.uncertainty) == {"mean-rank:logme:lead", "logme", "lead"}


def test_resamples_of_different_images_do_not_pair():
    f, y = separated()
    a = score_and_resample("lead", features=f, labels=y, n_resamples=10)
    b = score_and_resample("lead", features=f[:-4], labels=y[:-4], n_resamples=10)
    out, notes = summarize_ranking(("lead",), {"lead": {"a": a, "b": b}})
    assert out == {} and "resamples differ" in notes["lead"]
    assert math.isfinite(a.score)
