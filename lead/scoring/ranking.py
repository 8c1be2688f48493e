"""One ranking path: which methods run, which one ranks, and the ranks, for Python and the flow alike.

``rank_models(arrays, labels)`` is the whole ranking from Python; the ``rank-zoo`` flow computes the
per-model scores in cached Prefect tasks and then calls the same :func:`plan_methods` and
:func:`rank_scores`, so the command line and Python cannot disagree.

Rules (docs/benchmarks.md says how the default was chosen):

- ``methods=None`` (or ``"default"``) is :data:`lead.scoring.DEFAULT_METHODS`: the first ranks, the
  others are computed beside it. A default method the dataset is too small for (fewer samples than its
  ``min_samples``) is left out, with the reason, in ``dropped``.
- An explicit list is computed as given (``"all"`` expands to every registered method); when its first
  method cannot score a dataset that small, the next one that can ranks instead (``fallback``).
- An ensemble (a registered method with ``members``) is computed from its members' scores across the
  zoo (:func:`lead.scoring.ensemble.aggregate`); its members are computed too and reported.
- Every method ranks the models it could score: 1 = best, equal scores share a rank (competition
  ranking); a model a method could not score has NaN there and the error in ``errors``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from lead.errors import InputError


@dataclass(frozen=True)
class MethodPlan:
    """What a ranking computes.

    Attributes:
        methods: the methods reported, in order (the ranking one first is not implied; see ``primary``).
        primary: the method that ranks.
        computed: the methods computed per model (``methods`` with ensembles replaced by their members).
        dropped: ``{method: reason}`` for default methods left out (the dataset is too small for them).
        fallback: the reason the first method does not rank, or "" when it does.
    """

    methods: tuple[str, ...]
    primary: str
    computed: tuple[str, ...]
    dropped: dict[str, str] = field(default_factory=dict)
    fallback: str = ""


def parse_methods(methods: Sequence[str] | str | None) -> tuple[list[str], bool]:
    """``None``/``"default"``, ``"lead,logme"``, ``"all"`` or a list -> (validated, de-duplicated method
    ids in order, whether it is the default). ``all`` expands to every registered method. Only ``None``
    and ``"default"`` are the default: an explicit list equal to it is taken as written.

    Raises:
        InputError: empty, or an unknown method (the message lists the known ones).
    """
    from lead.scoring import DEFAULT_METHODS, METHODS, get_method

    if methods is None or (isinstance(methods, str) and methods.strip() == "default") or list(methods) == ["default"]:
        return list(DEFAULT_METHODS), True
    if isinstance(methods, str):
        methods = methods.split(",")
    expanded: list[str] = []
    for m in (str(m).strip() for m in methods):
        expanded.extend(METHODS if m == "all" else [m])
    out: list[str] = []
    for m in expanded:
        if m and m not in out:
            get_method(m)
            out.append(m)
    if not out:
        raise InputError("methods must name at least one method; got none.")
    return out, False


def plan_methods(methods: Sequence[str] | str | None, n_samples: int) -> MethodPlan:
    """Resolve ``methods`` for a dataset of ``n_samples`` images (those actually read) into a :class:`MethodPlan`.

    Raises:
        InputError: as :func:`parse_methods`.
    """
    from lead.scoring import get_method

    ids, is_default = parse_methods(methods)
    dropped: dict[str, str] = {}
    if is_default:
        fit = [m for m in ids if n_samples >= get_method(m).min_samples]
        if fit:
            for m in ids:
                if m not in fit:
                    dropped[m] = f"needs at least {get_method(m).min_samples} images; the dataset has {n_samples}"
            ids = fit
    primary, fallback = ids[0], ""
    if n_samples < get_method(primary).min_samples:
        for other in ids[1:]:
            if n_samples >= get_method(other).min_samples:
                fallback = (f"{primary} needs at least {get_method(primary).min_samples} images and the dataset has "
                            f"{n_samples}: ranking by {other}")
                primary = other
                break
    computed: list[str] = []
    for m in ids:
        for c in get_method(m).members or (m,):
            if c not in computed:
                computed.append(c)
    return MethodPlan(tuple(ids), primary, tuple(computed), dropped, fallback)


@dataclass(frozen=True)
class Ranking:
    """A ranking of a zoo.

    Attributes:
        primary: the method that ranks.
        methods: every method reported (ensembles' members included), the primary first.
        scores: ``scores[method][model]``, float, NaN where the method failed for the model.
        errors: ``errors[method][model]``, why it failed ("<Type>: <message>"); only failures.
        ranks: ``ranks[model]`` by the primary method, 1 = best, ties share a rank; models the primary
            method could not score are absent.
        ranks_by: ``ranks_by[method][model]``, the same for every method.
        best: the models ranked 1 by the primary method (several when they tie exactly; empty when none
            was scored).
        dropped: default methods left out, with the reason; fallback: why the first method does not rank.
        uncertainty: ``uncertainty[method][model]``, a :class:`lead.scoring.bootstrap.Uncertainty` (P(best),
            the 90% rank interval, tied with the best) from the paired bootstrap; empty when it was off.
        uncertainty_notes: ``{method: note}``, why a method has fewer resamples or none (too slow).
    """

    primary: str
    methods: tuple[str, ...]
    scores: dict[str, dict[str, float]]
    errors: dict[str, dict[str, str]]
    ranks: dict[str, int]
    ranks_by: dict[str, dict[str, int]]
    best: tuple[str, ...]
    dropped: dict[str, str] = field(default_factory=dict)
    fallback: str = ""
    uncertainty: dict = field(default_factory=dict)
    uncertainty_notes: dict[str, str] = field(default_factory=dict)


def rank_scores(plan: MethodPlan, scores: Mapping[str, Mapping[str, float]],
                errors: Mapping[str, Mapping[str, str]] | None = None) -> Ranking:
    """Ensembles and ranks from the per-model scores of ``plan.computed``.

    Args:
        scores: ``{method: {model: score}}`` for the methods of ``plan.computed``; a missing or NaN
            entry is a failure. errors: ``{method: {model: reason}}`` for the failures.
    Returns:
        a :class:`Ranking`.
    """
    from lead.evaluation import competition_ranks
    from lead.scoring import get_method
    from lead.scoring.ensemble import aggregate

    errors = {m: dict(v) for m, v in (errors or {}).items()}
    models = sorted({k for v in scores.values() for k in v} | {k for v in errors.values() for k in v})
    table: dict[str, dict[str, float]] = {}
    for m in plan.computed:
        got = scores.get(m, {})
        table[m] = {k: float(got[k]) if k in got and got[k] is not None and math.isfinite(got[k]) else math.nan
                    for k in models}
        for k in models:
            if math.isnan(table[m][k]):
                errors.setdefault(m, {}).setdefault(k, "not scored")
    order = [plan.primary] + [m for m in plan.methods if m != plan.primary]
    for m in plan.methods:
        method = get_method(m)
        if method.members:
            table[m] = aggregate({c: table[c] for c in method.members}, how=method.how)
            if all(math.isnan(v) for v in table[m].values()):
                errors[m] = {k: f"no member of {m} ({', '.join(method.members)}) scored every model" for k in models}
    reported = order + [m for m in plan.computed if m not in order]
    ranks_by = {m: competition_ranks({k: v for k, v in table[m].items() if math.isfinite(v)}) for m in reported}
    primary_ranks = ranks_by[plan.primary]
    best = tuple(sorted(k for k, r in primary_ranks.items() if r == 1))
    return Ranking(
        primary=plan.primary,
        methods=tuple(reported),
        scores={m: table[m] for m in reported},
        errors={m: errors[m] for m in reported if errors.get(m)},
        ranks=primary_ranks,
        ranks_by=ranks_by,
        best=best,
        dropped=dict(plan.dropped),
        fallback=plan.fallback,
    )


def rank_models(arrays: Mapping[str, tuple], labels, methods: Sequence[str] | str | None = None, *,
                bootstrap: int = 0, seed: int = 0, budget_s: float | None = None) -> Ranking:
    """Rank a zoo from its arrays, exactly as ``lead rank`` does from images.

    Args:
        arrays: ``{model: (features, logits_or_None)}``; features (N, D) float pre-logit features,
            logits (N, Cs) float source-head logits or None (a headless model: LEEP/NCE fail for it).
            A list pair is accepted too, and a bare features array means no logits.
        labels: (N,) class names, any hashable, the same samples for every model.
        methods: ``None`` for the default (:data:`lead.scoring.DEFAULT_METHODS`), a comma-separated
            string, ``"all"`` or a list of method ids.
        bootstrap: paired bootstrap resamples B (:mod:`lead.scoring.bootstrap`); 0 (the default here,
            so that a Python call costs one score per method; ``lead rank`` uses 200) turns it off.
        seed: the resamples' seed.
        budget_s: seconds a method recomputed on each resample (LogME, H-score, GBC, TransRate) may spend
            per model; None: :data:`lead.scoring.bootstrap.RECOMPUTE_BUDGET_S` (5 s). A method that cannot
            reach enough resamples within it is reported "too slow to resample" (no uncertainty).
    Returns:
        a :class:`Ranking`: ``.primary``, ``.scores[method][model]`` (NaN where a method failed, with
        ``.errors[method][model]`` saying why), ``.ranks[model]`` (1 = best, ties share a rank),
        ``.uncertainty[method][model]`` (P(best), rank interval; with ``bootstrap`` > 0).
    Raises:
        InputError: an unknown method, no models, arrays whose row count differs from the labels', or a
            bad ``bootstrap``/``seed``.
    """
    from dataclasses import replace

    from lead.scoring.bootstrap import ResampledScore, score_and_resample, summarize_ranking

    from lead.scoring import get_method

    if not arrays:
        raise InputError("rank_models: arrays must hold at least one model; got none.")
    n = len(labels)
    pairs = {}
    for name, pair in arrays.items():
        if isinstance(pair, np.ndarray):  # features alone: a headless model
            pair = (pair, None)
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InputError(f"rank_models: arrays[{name!r}] must be a (features, logits_or_None) pair; got {type(pair).__name__}.")
        rows = np.shape(pair[0])[0] if np.ndim(pair[0]) else 0
        if rows != n:
            raise InputError(f"rank_models: features of {name!r} must have one row per label ({n}); got {rows}.")
        pairs[name] = tuple(pair)
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise InputError(f"rank_models: bootstrap must be an int >= 0 (resamples; 0 = off); got {bootstrap!r}.")
    plan = plan_methods(methods, n)
    scores: dict[str, dict[str, float]] = {m: {} for m in plan.computed}
    errors: dict[str, dict[str, str]] = {}
    resampled: dict[str, dict[str, ResampledScore]] = {m: {} for m in plan.computed}
    for name, (features, logits) in pairs.items():
        for m in plan.computed:
            try:
                if bootstrap:
                    r = score_and_resample(get_method(m), features=features, logits=logits, labels=labels,
                                           n_resamples=bootstrap, seed=seed,
                                           **({} if budget_s is None else {"budget_s": budget_s}))
                    resampled[m][name] = r
                    scores[m][name] = r.score
                else:
                    scores[m][name] = get_method(m)(features=features, logits=logits, labels=labels)
            except Exception as err:  # one method's failure on one model never sinks the others
                scores[m][name] = math.nan
                errors.setdefault(m, {})[name] = f"{type(err).__name__}: {err}"
    ranking = rank_scores(plan, scores, errors)
    if not bootstrap:
        return ranking
    uncertainty, notes = summarize_ranking(ranking.methods, resampled, scores=ranking.scores)
    return replace(ranking, uncertainty=uncertainty, uncertainty_notes=notes)
