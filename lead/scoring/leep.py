"""LEEP: the log expected empirical prediction of a source classifier re-mapped to the target labels.

Source: C. V. Nguyen, T. Hassner, M. Seeger, C. Archambeau, "LEEP: A New Measure to Evaluate
Transferability of Learned Representations", ICML 2020 (the LEEP measure; formula below).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from lead.errors import ScoreError
from lead.scoring._validate import check_inputs


def leep(logits, labels: Sequence[Hashable] | np.ndarray) -> float:
    """LEEP: mean log-likelihood of the target labels under the source head's "dummy" classifier. Higher is better.

    The source head gives theta_i = softmax(logits_i) over Cs source classes. The empirical joint
    Phat(y, z) = (1/N) sum_{i: y_i = y} theta_i[z] and conditional Phat(y | z) = Phat(y, z) / Phat(z)
    turn it into a classifier of the target labels, p(y | x_i) = sum_z Phat(y | z) theta_i[z]; LEEP is
    the average log-probability it gives the true labels. Values are in nats (<= 0); they compare
    models on one dataset only.

    Source: Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned Representations",
    ICML 2020: T = (1/N) sum_i log sum_z Phat(y_i | z) theta_i[z].
    Deviations: none from the paper or thuml/LogME ``LEEP.py`` (which takes probabilities; this
    function takes logits and applies the softmax). Source classes whose total probability Phat(z)
    underflows to 0 have theta_i[z] = 0 for every sample and are left out of the sum (the reference
    gives NaN there). Some benchmark code (TencentARC/SFDA ``metrics.py``) reports the mean of
    p(y_i | x_i) without the log; this is the paper's definition, with the log.

    Args:
        logits: source-head logits, shape (N, Cs), float, Cs >= 1; computed in float64.
        labels: class indices or names, shape (N,); at least two classes.
    Returns:
        float, in nats, <= 0; finite.
    Raises:
        InputError: non-finite or misshapen logits, labels not matching, fewer than two classes.
    Notes:
        Cost O(N Cs K); memory O(N Cs + K Cs).
    """
    return leep_terms(logits, labels)[0]


def leep_terms(logits, labels: Sequence[Hashable] | np.ndarray) -> tuple[float, np.ndarray]:
    """:func:`leep` (same arguments and errors) and its per-sample terms log p(y_i | x_i): (score, terms of
    shape (N,), float64, in the caller's order); the score is their mean. The empirical conditional
    Phat(y | z) inside each term is the one fitted on all N samples."""
    from scipy.special import softmax  # lazy: importing the registry must not import scipy
    where = "leep"
    s, enc = check_inputs(logits, labels, where=where, name="logits")
    terms = leep_log_eep(softmax(s, axis=1), enc.codes, enc.n_classes, where=where)
    return float(terms.mean()), terms


def leep_from_probabilities(theta: np.ndarray, codes: np.ndarray, n_classes: int, *, where: str) -> float:
    """LEEP of validated inputs: theta (N, C) rows on the simplex, codes (N,) in 0..K-1. Shared with N-LEEP."""
    return float(leep_log_eep(theta, codes, n_classes, where=where).mean())


def leep_log_eep(theta: np.ndarray, codes: np.ndarray, n_classes: int, *, where: str) -> np.ndarray:
    """Per-sample log p(y_i | x_i) of LEEP's dummy classifier, shape (N,), float64; LEEP is their mean.

    Raises:
        ScoreError: some sample gets probability 0 for its label (cannot happen for rows on the simplex;
            a guard against returning -inf or NaN).
    """
    n = codes.shape[0]
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), codes] = 1.0
    joint = onehot.T @ theta / n  # Phat(y, z), (K, C)
    marginal = joint.sum(axis=0)  # Phat(z), (C,)
    used = marginal > 0
    conditional = joint[:, used] / marginal[used]  # Phat(y | z), (K, C_used)
    eep = np.einsum("ic,ic->i", theta[:, used], conditional[codes])  # p(y_i | x_i), (N,)
    if not np.all(eep > 0):
        raise ScoreError(
            f"{where}: every sample's expected empirical prediction must be > 0; got 0 for "
            f"{int((eep <= 0).sum())} samples. Report the inputs' scale."
        )
    return np.log(eep)
