"""Rank aggregation: one zoo-wide score from several transferability scores.

A single score's scale means nothing across methods (LogME is in nats per sample, GBC a negative sum of
Bhattacharyya coefficients), so an ensemble combines what each method says about the *order* of the zoo:

- ``how="rank"``: the mean over members of each model's normalised rank, r / n with r the average rank
  (1 = worst, n = best; ties share the mean of their ranks; ``scipy.stats.rankdata``). Borda count.
- ``how="z"``: the mean over members of each model's z-score across the zoo (score minus the zoo mean,
  over the zoo's standard deviation; 0 when every model has the same score).

Both are higher-is-better, like every score here. They are zoo-wide: adding a model can change the
others' aggregate values (never the order of two models on which every member agrees).
"""

from __future__ import annotations

import math

import numpy as np

from lead.errors import InputError

HOWS = ("rank", "z")


def aggregate(scores: dict[str, dict[str, float]], *, how: str = "rank") -> dict[str, float]:
    """Aggregate per-method scores of a zoo into one score per model.

    Args:
        scores: ``{method: {model: score}}``; NaN marks a model the method could not score. A member
            that failed on any model of the zoo is left out for the whole zoo (every model is then
            compared on the same members); the result is NaN for every model when no member is left.
        how: ``"rank"`` (mean normalised rank) or ``"z"`` (mean z-score), see the module docstring.
    Returns:
        ``{model: aggregate}``, floats, higher is better; models are those of the first member.
    Raises:
        InputError: an unknown ``how``, no members, or members over different sets of models.
    """
    from scipy.stats import rankdata  # lazy: importing the registry must not import scipy
    if how not in HOWS:
        raise InputError(f"aggregate: how must be one of {HOWS}; got {how!r}.")
    if not scores:
        raise InputError("aggregate: at least one member method is needed; got none.")
    members = list(scores)
    models = list(scores[members[0]])
    for m in members[1:]:
        if set(scores[m]) != set(models):
            raise InputError(f"aggregate: every member must score the same models; {m!r} differs from {members[0]!r}.")
    usable = [m for m in members if all(math.isfinite(scores[m][k]) for k in models)]
    if not usable or not models:
        return {k: math.nan for k in models}
    total = np.zeros(len(models))
    for m in usable:
        v = np.array([scores[m][k] for k in models], dtype=np.float64)
        if how == "rank":
            total += rankdata(v, method="average") / len(models)
        else:
            sd = v.std()
            total += (v - v.mean()) / sd if sd > 0 else np.zeros_like(v)
    return {k: float(x) for k, x in zip(models, total / len(usable))}
