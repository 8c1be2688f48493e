"""Rank statistics against hand-computed values and the published benchmark's convention."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lead.errors import InputError
from lead.evaluation import competition_ranks, kendall_tau, rank_statistics, regret, spearman_rho, top1_hit, weighted_tau


def weighted_tau_by_hand(x, y):
    """Vigna's weighted tau with hyperbolic weights 1/(r+1), ranks from each sequence in turn, averaged
    (no ties). Written out pair by pair."""
    def one_side(order_by):
        rank = np.empty(len(x), dtype=int)
        rank[np.argsort(-order_by, kind="stable")] = np.arange(len(x))
        w = 1.0 / (rank + 1)
        num = den_x = den_y = 0.0
        for i, j in itertools.combinations(range(len(x)), 2):
            wij = w[i] + w[j]
            sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            num += wij * sx * sy
            den_x += wij * sx * sx
            den_y += wij * sy * sy
        return num / np.sqrt(den_x * den_y)

    return (one_side(x) + one_side(y)) / 2


def test_weighted_tau_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.standard_normal(7), rng.standard_normal(7)
        assert weighted_tau(x, y) == pytest.approx(weighted_tau_by_hand(x, y), rel=1e-12)


def test_perfect_and_reversed_orders():
    accs = [70.0, 80.0, 90.0, 60.0]
    assert weighted_tau(accs, accs) == pytest.approx(1.0)
    assert weighted_tau([-a for a in accs], accs) == pytest.approx(-1.0)
    assert kendall_tau(accs, accs) == pytest.approx(1.0)
    assert spearman_rho([-a for a in accs], accs) == pytest.approx(-1.0)


def test_kendall_and_spearman_by_hand():
    s, a = [1, 2, 3, 4], [1, 3, 2, 4]
    # 6 pairs, one discordant: (5 - 1) / 6
    assert kendall_tau(s, a) == pytest.approx(4 / 6)
    # rank differences d = (0, 1, -1, 0): 1 - 6 * 2 / (4 * 15)
    assert spearman_rho(s, a) == pytest.approx(1 - 6 * 2 / (4 * 15))


def test_top1_and_regret():
    accs = [70.0, 80.0, 90.0]
    assert top1_hit([0.1, 0.2, 0.9], accs) == 1.0 and regret([0.1, 0.2, 0.9], accs) == 0.0
    assert top1_hit([0.1, 0.9, 0.2], accs) == 0.0 and regret([0.1, 0.9, 0.2], accs) == pytest.approx(10.0)
    stats = rank_statistics([0.1, 0.9, 0.2], accs)
    assert set(stats) == {"weighted_tau", "kendall_tau", "spearman_rho", "top1_hit", "regret"}


def test_bad_inputs():
    with pytest.raises(InputError, match="equal length"):
        weighted_tau([1, 2], [1, 2, 3])
    with pytest.raises(InputError, match="at least 2 models"):
        weighted_tau([1], [1])
    with pytest.raises(InputError, match="must be finite"):
        regret([1, float("nan")], [1, 2])


def test_competition_ranks_share_ties():
    assert competition_ranks({"a": 1.0, "b": 1.0, "c": 0.5, "d": 2.0}) == {"d": 1, "a": 2, "b": 2, "c": 4}
    assert competition_ranks({"x": 1.0, "y": 1.0, "z": 1.0}) == {"x": 1, "y": 1, "z": 1}
    assert competition_ranks({}) == {}
