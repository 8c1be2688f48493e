"""Outcomes and the track record: real fine-tuned accuracies taken back, and what they say about the methods.

A team that uses ``lead`` fine-tunes the models it picked and so learns their real accuracy. An
*outcome* is one such accuracy: (dataset, model, metric) -> value. This module is pure (no orchestrator,
no storage): it validates outcomes, reconciles them with those already recorded, turns the store's
selections and outcomes into a benchmark :class:`~lead.benchmark.Suite`, and chooses the method to rank
by from the resulting rows (``--method auto``). ``storage.outcomes`` feeds it.

Units. Every metric is a percentage in [0, 100] unless declared a fraction in [0, 1] (``unit="fraction"``,
``--unit fraction`` on the command line; e.g. ``val_acc`` logged by Keras or Lightning). Values are kept
as given and also normalised to percent (:attr:`Outcome.accuracy`), so a fraction and a percentage of the
same metric compare.

Policy (our choice, documented in README "Learning from outcomes"):

- one current value per (dataset, model, metric); an identical repeat (same accuracy within
  :data:`SAME_TOLERANCE` percentage points) is reported and not written again; a different value is
  refused unless ``replace`` (then the new value supersedes the old, which stays in the log);
- two different values for one key in the same batch (e.g. two seeds of one fine-tuning) are refused
  even with ``replace``: average them yourself or filter the runs;
- the track record judges a dataset on one metric, the one recorded for the most models there (ties:
  :data:`DEFAULT_METRIC` first, then by name), and only datasets with outcomes for at least
  :data:`MIN_MODELS` models that the dataset's latest selection scored;
- ``auto`` ranks by the registered method with the highest mean weighted tau over the datasets where it
  was measured, among the methods measured on at least ``min_datasets`` datasets
  (:data:`AUTO_MIN_DATASETS`); ties go to the default methods' order, then the name. Before that it is the
  project's default (``lead.scoring.ranking.plan_methods(None, n)``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from typing import TYPE_CHECKING

from lead.errors import InputError

if TYPE_CHECKING:  # lead.benchmark pulls in scipy and torch; lead.config imports this module's constants
    from lead.benchmark import Suite

#: The metric of ``lead outcomes add`` when none is given.
DEFAULT_METRIC = "accuracy"
#: Units an outcome can be given in, and the range each allows.
UNITS = {"percent": (0.0, 100.0), "fraction": (0.0, 1.0)}
#: Two accuracies (in percent) that differ by at most this are the same value (float round-off of a
#: fraction times 100). Our choice.
SAME_TOLERANCE = 1e-9
#: A dataset enters the track record with outcomes for at least this many scored models: weighted tau of
#: two models is +1 or -1 and says little. Our choice.
MIN_MODELS = 3
#: ``--method auto`` uses the track record once a method has been measured on this many datasets
#: (``LEAD_AUTO_MIN_DATASETS``, ``--auto-min-datasets``). Our choice.
AUTO_MIN_DATASETS = 3
#: The value of ``--method`` that asks for the method with the best track record.
AUTO = "auto"
#: Name of the suite made from a store's selections and outcomes.
TRACK_RECORD_SUITE = "track-record"


@dataclass(frozen=True)
class Outcome:
    """One real fine-tuned result.

    Attributes:
        dataset: dataset name as ranked (``lead rank --name``/folder name); model: model id of the zoo.
        metric: metric name (default ``accuracy``); value: as given, in ``unit``.
        unit: ``"percent"`` ([0, 100]) or ``"fraction"`` ([0, 1]).
        note: free text; source: where it came from (``cli`` or ``mlflow:<run id>``).
    """

    dataset: str
    model: str
    value: float
    metric: str = DEFAULT_METRIC
    unit: str = "percent"
    note: str = ""
    source: str = "cli"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.dataset, self.model, self.metric)

    @property
    def accuracy(self) -> float:
        """The value in percent."""
        return self.value * 100.0 if self.unit == "fraction" else self.value


def check_outcome(outcome: Outcome, ranked: Mapping[str, Iterable[str]], where: str = "outcomes") -> Outcome:
    """Validate one outcome against the store's selections.

    Args:
        ranked: ``{dataset name: models ranked on it}`` over every selection in the store.
    Returns:
        the outcome, with ``value`` as a float.
    Raises:
        InputError: an empty metric, an unknown unit, a non-numeric or non-finite value, a value outside
            the unit's range, a dataset never ranked, or a model never ranked on that dataset.
    """
    o = outcome
    what = f"{where}: {o.model} on {o.dataset}"
    if not o.metric or not o.metric.strip():
        raise InputError(f"{what}: metric must be a non-empty name; got {o.metric!r}.")
    if o.unit not in UNITS:
        raise InputError(f"{what}: unit must be one of {', '.join(UNITS)}; got {o.unit!r}.")
    try:
        value = float(o.value)
    except (TypeError, ValueError):
        raise InputError(f"{what}: {o.metric} must be a number; got {o.value!r}.") from None
    lo, hi = UNITS[o.unit]
    if not math.isfinite(value) or not lo <= value <= hi:
        fix = ("Pass --unit percent for a percentage." if o.unit == "fraction"
               else "Pass --unit fraction for a metric in [0, 1].")
        if o.unit == "percent" and math.isfinite(value) and value > hi:
            fix = "Check the value: a percentage cannot exceed 100."
        raise InputError(f"{what}: {o.metric} in {o.unit} must be in [{lo:g}, {hi:g}]; got {value!r}. {fix}")
    if o.dataset not in ranked:
        known = ", ".join(sorted(ranked)) or "none"
        raise InputError(f"{where}: dataset must be one this store has ranked; got {o.dataset!r} (ranked: {known}). "
                         "Rank it first with `lead rank`, or check --store and the dataset's name.")
    models = set(ranked[o.dataset])
    if o.model not in models:
        raise InputError(f"{where}: model must be one ranked on {o.dataset!r}; got {o.model!r} (ranked there: "
                         f"{', '.join(sorted(models))}). Use the zoo's model id.")
    return replace(o, value=value)


@dataclass(frozen=True)
class Recorded:
    """An outcome already in the store: its accuracy in percent, when and where from."""

    accuracy: float
    recorded_at: str
    source: str


@dataclass(frozen=True)
class Reconciled:
    """What a batch of new outcomes does to the store.

    Attributes:
        write: the outcomes to write (new keys, and replacements when ``replace``).
        repeats: outcomes identical to a recorded value (or repeated in the batch): not written.
        conflicts: human-readable lines, one per key whose new value differs from the recorded one (and
            ``replace`` was not given) or that the batch gives two different values.
        replaced: ``{key: old accuracy}`` of the recorded values the batch supersedes.
    """

    write: list[Outcome]
    repeats: list[Outcome]
    conflicts: list[str]
    replaced: dict[tuple[str, str, str], float] = field(default_factory=dict)


def reconcile(new: Iterable[Outcome], current: Mapping[tuple[str, str, str], Recorded], replace: bool = False) -> Reconciled:
    """Compare a batch of validated outcomes with the recorded ones (see the module's policy)."""
    write: dict[tuple, Outcome] = {}
    repeats: list[Outcome] = []
    conflicts: list[str] = []
    replaced: dict[tuple, float] = {}
    clashed: set[tuple] = set()
    for o in new:
        if o.key in clashed:
            continue
        if o.key in write:  # the same key twice in one batch
            if abs(write[o.key].accuracy - o.accuracy) <= SAME_TOLERANCE:
                repeats.append(o)
            else:
                clashed.add(o.key)
                first = write.pop(o.key)
                replaced.pop(o.key, None)
                conflicts.append(f"{o.model} on {o.dataset} ({o.metric}): this batch gives two values, {first.accuracy:g} "
                                 f"({first.source}) and {o.accuracy:g} ({o.source}); record one (e.g. their mean) or "
                                 "filter the runs.")
            continue
        old = current.get(o.key)
        if old is not None and abs(old.accuracy - o.accuracy) <= SAME_TOLERANCE:
            repeats.append(o)
            continue
        if old is not None and not replace:
            clashed.add(o.key)
            conflicts.append(f"{o.model} on {o.dataset} ({o.metric}): recorded {old.accuracy:g} on {old.recorded_at} "
                             f"({old.source}); got {o.accuracy:g}. Pass --replace to record the new value instead.")
            continue
        if old is not None:
            replaced[o.key] = old.accuracy
        write[o.key] = o
    return Reconciled(list(write.values()), repeats, conflicts, replaced)


def pick_metric(by_metric: Mapping[str, Mapping[str, float]]) -> str:
    """The metric a dataset is judged on: the one recorded for the most models; ties: ``accuracy`` first,
    then by name. ``by_metric``: ``{metric: {model: accuracy}}``, not empty."""
    return min(by_metric, key=lambda m: (-len(by_metric[m]), m != DEFAULT_METRIC, m))


def history_suite(
    scores: Mapping[str, Mapping[str, Mapping[str, float]]],
    outcomes: Mapping[str, Mapping[str, Mapping[str, float]]],
    zoo: str = "",
    min_models: int = MIN_MODELS,
    metric: str | None = None,
) -> tuple[Suite | None, dict[str, str]]:
    """A benchmark suite from a store's selections and outcomes.

    Args:
        scores: ``scores[dataset][method][model]``, the latest selection's scores per dataset.
        outcomes: ``outcomes[dataset][metric][model]``, current accuracies in percent.
        zoo: recorded as the suite's zoo (for the static priors); may be empty.
        min_models: fewest models with both a score and an outcome for a dataset to count.
        metric: judge every dataset on this metric; None: :func:`pick_metric` per dataset.
    Returns:
        ``(suite or None when no dataset qualifies, {dataset: why it was left out}``). The suite's
        ``datasets`` map each name to ``"metric <name>"``; its unit is percent.
    """
    from lead.benchmark import Suite

    accuracies: dict[str, dict[str, float]] = {}
    metrics_used: dict[str, str] = {}
    left_out: dict[str, str] = {}
    for dataset in sorted(outcomes):
        by_metric = {m: dict(v) for m, v in outcomes[dataset].items() if v}
        if metric is not None:
            by_metric = {metric: by_metric[metric]} if metric in by_metric else {}
        if not by_metric:
            left_out[dataset] = f"no outcomes in metric {metric!r}"
            continue
        chosen = pick_metric(by_metric)
        scored = {k for v in scores.get(dataset, {}).values() for k, s in v.items() if math.isfinite(s)}
        accs = {k: a for k, a in by_metric[chosen].items() if k in scored}
        if len(accs) < min_models:
            left_out[dataset] = (f"outcomes for {len(accs)} scored model(s) in metric {chosen}; the track record needs "
                                 f"at least {min_models}")
            continue
        accuracies[dataset] = dict(sorted(accs.items()))
        metrics_used[dataset] = chosen
    if not accuracies:
        return None, left_out
    suite = Suite(
        name=TRACK_RECORD_SUITE,
        description="the store's latest selection per dataset against the real fine-tuned accuracies recorded as outcomes",
        path=Path("."),
        zoo=zoo,
        datasets={d: f"metric {metrics_used[d]}" for d in accuracies},
        accuracies=accuracies,
        unit="percent",
    )
    return suite, left_out


@dataclass(frozen=True)
class AutoChoice:
    """The resolution of ``--method auto``.

    Attributes:
        method: the method with the best track record, or None to use the default methods.
        methods: the methods to compute, the ranking one first (None: the default, as ``plan_methods(None, n)``).
        reason: one sentence saying why.
        means: ``{method: mean weighted tau}`` of the eligible methods; datasets: ``{method: datasets measured}``.
        min_datasets: the threshold used.
    """

    method: str | None
    methods: list[str] | None
    reason: str
    means: dict[str, float]
    datasets: dict[str, list[str]]
    min_datasets: int

    def evidence(self) -> dict:
        """A JSON-able summary for MLflow tags and the rankings table."""
        return {"method": self.method, "reason": self.reason, "min_datasets": self.min_datasets,
                "mean_weighted_tau": {m: round(v, 6) for m, v in self.means.items()},
                "datasets": self.datasets}


def choose_method(rows: list[dict], min_datasets: int = AUTO_MIN_DATASETS, registered: Iterable[str] | None = None,
                  preferred: Iterable[str] = ()) -> AutoChoice:
    """Choose the method to rank by from track-record rows (:func:`lead.benchmark.evaluate`'s output).

    Args:
        rows: one dict per (dataset, method) with ``weighted_tau`` (NaN when undefined).
        min_datasets: a method is eligible once measured (finite weighted tau) on this many datasets.
        registered: the methods ``lead rank`` can rank by (default: every registered method); others
            (the static priors) are never chosen.
        preferred: tie-break order (the default methods), then the name.
    Returns:
        an :class:`AutoChoice`; ``methods`` is the chosen method first, then every other method with a
        track record here, so each selection keeps measuring them; None before any method is eligible.
    Raises:
        InputError: ``min_datasets`` below 1.
    """
    from lead.benchmark import mean_by_method

    if min_datasets < 1:
        raise InputError(f"auto: min_datasets must be at least 1; got {min_datasets}. Set LEAD_AUTO_MIN_DATASETS "
                         "or --auto-min-datasets to a positive number.")
    if registered is None:
        from lead.scoring import METHODS as registered  # noqa: N811
    registered = list(registered)
    preferred = list(preferred)
    measured: dict[str, list[str]] = {}
    for r in rows:
        if r["method"] in registered and math.isfinite(r["weighted_tau"]):
            measured.setdefault(r["method"], []).append(r["dataset"])
    mean = mean_by_method([r for r in rows if r["method"] in measured])
    eligible = {m: mean[m] for m, ds in measured.items() if len(ds) >= min_datasets}
    datasets = {m: sorted(ds) for m, ds in measured.items()}
    if not eligible:
        covered = sorted({d for ds in measured.values() for d in ds})
        most = max((len(ds) for ds in measured.values()), default=0)
        reason = (f"the track record covers {len(covered)} dataset(s)" + (f" ({', '.join(covered)})" if covered else "")
                  + f" and no method was measured on {min_datasets} yet (most: {most}); auto needs at least "
                  f"{min_datasets} (LEAD_AUTO_MIN_DATASETS): ranking by the default methods")
        return AutoChoice(None, None, reason, {m: mean[m] for m in measured}, datasets, min_datasets)

    def order(m: str):
        return (-eligible[m], preferred.index(m) if m in preferred else len(preferred), m)

    ranked = sorted(eligible, key=order)
    best = ranked[0]
    others = ", ".join(f"{m} {eligible[m]:.3f}" for m in ranked[1:])
    reason = (f"{best} has the best track record here: mean weighted tau {eligible[best]:.3f} over "
              f"{len(measured[best])} dataset(s) ({', '.join(datasets[best])})" + (f"; then {others}" if others else ""))
    rest = [m for m in registered if m in measured and m != best]
    return AutoChoice(best, [best, *rest], reason, eligible, datasets, min_datasets)


def is_auto(methods) -> bool:
    """Whether ``methods`` (as ``lead rank --method`` or the flow takes it) asks for ``auto``."""
    if isinstance(methods, str):
        return methods.strip() == AUTO
    return methods is not None and [str(m).strip() for m in methods] == [AUTO]


def track_record_rows(
    scores: Mapping[str, Mapping[str, Mapping[str, float]]],
    outcomes: Mapping[str, Mapping[str, Mapping[str, float]]],
    methods: Iterable[str],
    min_models: int = MIN_MODELS,
    metric: str | None = None,
) -> tuple[list[dict], dict[str, str]]:
    """Rank statistics of ``methods`` on every dataset of the track record (:func:`history_suite`, then
    :func:`lead.benchmark.evaluate`). Returns ``(rows, {dataset: why it was left out})``; no rows when no
    dataset qualifies."""
    from lead.benchmark import evaluate

    suite, left_out = history_suite(scores, outcomes, min_models=min_models, metric=metric)
    if suite is None:
        return [], left_out
    return evaluate(suite, {d: dict(scores.get(d, {})) for d in suite.datasets}, list(methods)), left_out


def resolve_auto(
    scores: Mapping[str, Mapping[str, Mapping[str, float]]],
    outcomes: Mapping[str, Mapping[str, Mapping[str, float]]],
    min_datasets: int = AUTO_MIN_DATASETS,
    min_models: int = MIN_MODELS,
) -> AutoChoice:
    """``--method auto`` from a store's latest selections (``scores[dataset][method][model]``) and current
    outcomes (``outcomes[dataset][metric][model]``, percent): :func:`track_record_rows` over the registered
    methods, then :func:`choose_method` with the default methods as tie-break.

    Raises:
        InputError: ``min_datasets`` below 1.
    """
    from lead.scoring import DEFAULT_METHODS, METHODS

    present = {m for v in scores.values() for m in v}
    rows, _ = track_record_rows(scores, outcomes, [m for m in METHODS if m in present], min_models=min_models)
    return choose_method(rows, min_datasets=min_datasets, registered=METHODS, preferred=DEFAULT_METHODS)
