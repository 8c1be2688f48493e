"""Rank statistics: how well a transferability score orders models by their fine-tuned accuracy.

All functions take two equal-length sequences over the same models, ``scores`` (higher = predicted
better) and ``accs`` (fine-tuned accuracy, any unit, higher = better), and return a Python float.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lead.errors import InputError


def _pair(scores: Sequence[float], accs: Sequence[float], where: str) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    a = np.asarray(accs, dtype=np.float64)
    if s.ndim != 1 or s.shape != a.shape:
        raise InputError(f"{where}: scores and accs must be 1-D and of equal length; got shapes {s.shape} and {a.shape}.")
    if s.size < 2:
        raise InputError(f"{where}: at least 2 models are needed to compare rankings; got {s.size}.")
    if not (np.isfinite(s).all() and np.isfinite(a).all()):
        raise InputError(f"{where}: scores and accs must be finite; got NaN or Inf. Drop the models that were not scored.")
    return s, a


def weighted_tau(scores: Sequence[float], accs: Sequence[float]) -> float:
    """Weighted Kendall tau between scores and fine-tuned accuracies, in [-1, 1].

    Source: Vigna, "A weighted correlation index for rankings with ties", WWW 2015, as used by the
    transferability literature (You et al. 2021; Shao et al. 2022): ``scipy.stats.weightedtau(scores,
    accs)[0]`` with default arguments (hyperbolic weigher 1/(r+1), average of the two lexicographic
    rankings), so that swaps among the top models weigh most.

    Raises:
        InputError: unequal lengths, fewer than 2 models, or non-finite values.
    """
    s, a = _pair(scores, accs, "weighted_tau")
    from scipy import stats  # lazy: a cached `lead rank` ranks with this module but needs no scipy.stats

    return float(stats.weightedtau(s, a)[0])


def kendall_tau(scores: Sequence[float], accs: Sequence[float]) -> float:
    """Kendall's tau-b between scores and accuracies, in [-1, 1] (scipy.stats.kendalltau)."""
    s, a = _pair(scores, accs, "kendall_tau")
    from scipy import stats

    return float(stats.kendalltau(s, a)[0])


def spearman_rho(scores: Sequence[float], accs: Sequence[float]) -> float:
    """Spearman's rank correlation between scores and accuracies, in [-1, 1] (scipy.stats.spearmanr)."""
    s, a = _pair(scores, accs, "spearman_rho")
    from scipy import stats

    return float(stats.spearmanr(s, a)[0])


def top1_hit(scores: Sequence[float], accs: Sequence[float]) -> float:
    """1.0 when the model with the highest score has the highest fine-tuned accuracy, else 0.0.

    Ties: the score's pick is the first model among those with the top score; a pick whose accuracy
    equals the best accuracy counts as a hit.
    """
    s, a = _pair(scores, accs, "top1_hit")
    return float(a[int(np.argmax(s))] == a.max())


def regret(scores: Sequence[float], accs: Sequence[float]) -> float:
    """Best fine-tuned accuracy minus that of the model the score picks (>= 0, in the accuracy's unit).

    The pick is the first model among those with the top score.
    """
    s, a = _pair(scores, accs, "regret")
    return float(a.max() - a[int(np.argmax(s))])


def rank_statistics(scores: Sequence[float], accs: Sequence[float]) -> dict[str, float]:
    """All of the above as a dict: weighted_tau, kendall_tau, spearman_rho, top1_hit, regret."""
    return {
        "weighted_tau": weighted_tau(scores, accs),
        "kendall_tau": kendall_tau(scores, accs),
        "spearman_rho": spearman_rho(scores, accs),
        "top1_hit": top1_hit(scores, accs),
        "regret": regret(scores, accs),
    }


def competition_ranks(scores: dict[str, float]) -> dict[str, int]:
    """Rank models by score, higher first, with equal scores sharing a rank ("1224" competition
    ranking): a model's rank is 1 + the number of models with a strictly higher score.

    Args:
        scores: model name -> finite score.
    Returns:
        model name -> rank (int >= 1).
    """
    values = sorted(scores.values(), reverse=True)
    first = {}
    for i, v in enumerate(values):
        first.setdefault(v, i + 1)
    return {name: first[v] for name, v in scores.items()}
