"""Transferability scores: arrays in, one float out, higher is better.

``METHODS`` lists the registered method ids; ``get_method(name)`` returns a :class:`Method` that says
what it needs (pre-logit features, source logits or both) and computes
``method(features=..., logits=..., labels=...) -> float``. The baselines (LogME, LEEP, NCE, N-LEEP,
H-score, SFDA, GBC, TransRate) are registered after LEAD, one file each; docs/baselines.md compares
them with their reference implementations.
"""

from __future__ import annotations

import math

import numpy as np

from collections.abc import Callable
from dataclasses import dataclass, field

from lead.errors import InputError
from lead.scoring.gbc import N_COMPONENTS, gbc
from lead.scoring.hscore import hscore
from lead.scoring.lead import LeadParams, LeadResult, lead_details, lead_score, lead_terms
from lead.scoring.leep import leep, leep_terms
from lead.scoring.logme import logme
from lead.scoring.nce import nce, nce_terms
from lead.scoring.nleep import COMPONENTS_PER_CLASS, SEED, VARIANCE, nleep, nleep_terms
from lead.scoring.sfda import sfda, sfda_terms
from lead.scoring.transrate import EPS, transrate


@dataclass(frozen=True)
class Method:
    """One registered transferability score.

    Attributes:
        name: method id, used as registry key, ``--method`` value, MLflow metric and ``method`` column.
        fn: the score function; called with ``features``/``logits`` as declared and ``labels``.
        needs_features: takes pre-logit features (N, D).
        needs_logits: takes source-head logits (N, Cs); models without a head cannot be scored.
        higher_is_better: always True here (scores that are "lower is better" are negated).
        min_classes: fewest classes the score is defined for.
        min_samples: fewest samples N the score can be computed from with its ``params`` (a necessary
            condition, not a sufficient one: e.g. N-LEEP needs N >= 5 K, GBC also D >= 64); below it
            the function raises InputError.
        params: the knobs it runs with, logged as MLflow params.
        reference: the paper.
        members: for an ensemble, the methods it aggregates across the zoo (``fn`` is then unused and
            the ranking computes it, :mod:`lead.scoring.ranking`); empty for a score of its own.
        how: an ensemble's aggregation, ``"rank"`` or ``"z"`` (:func:`lead.scoring.ensemble.aggregate`).
        scale_free: the score is the same for ``features * c`` (any c > 0), as transferability is
            (tested); False for the methods whose published definition has an absolute constant in the
            feature scale (docs/baselines.md, "Scale").
        terms: for a score that is a mean over samples, the function returning ``(score, terms)`` with
            ``terms`` the (N,) per-sample terms in the caller's order (called like ``fn``; ``score`` is
            ``fn``'s value); the bootstrap resamples them (:mod:`lead.scoring.bootstrap`). None for a
            score that is not a mean over samples: the bootstrap recomputes it on each resample.
    """

    name: str
    fn: Callable[..., float]
    needs_features: bool
    needs_logits: bool
    higher_is_better: bool = True
    min_classes: int = 2
    min_samples: int = 2
    params: dict = field(default_factory=dict)
    reference: str = ""
    members: tuple[str, ...] = ()
    how: str = ""
    scale_free: bool = True
    terms: Callable[..., tuple] | None = None

    def __call__(self, *, labels, features=None, logits=None) -> float:
        return float(self.fn(labels=labels, **self._inputs(features, logits), **self.params))

    def score_terms(self, *, labels, features=None, logits=None):
        """``(score, terms)``: the score, exactly as :meth:`__call__` computes it, and its per-sample terms,
        shape (N,), float64, in the caller's order, whose mean is the score (up to rounding).

        Raises:
            InputError: as :meth:`__call__`, or the method is not a mean over samples (``terms`` is None).
        """
        if self.terms is None:
            raise InputError(f"{self.name}: per-sample terms must exist for score_terms; the score is not a mean over samples.")
        score, terms = self.terms(labels=labels, **self._inputs(features, logits), **self.params)
        return float(score), np.asarray(terms, dtype=np.float64)

    def _inputs(self, features, logits) -> dict:
        if self.members:
            raise InputError(
                f"{self.name}: an ensemble of {', '.join(self.members)} is computed across a zoo; "
                "use lead.scoring.rank_models."
            )
        kwargs = {}
        if self.needs_features:
            if features is None:
                raise InputError(f"{self.name}: features must be given; got None.")
            kwargs["features"] = features
        if self.needs_logits:
            if logits is None:
                raise InputError(
                    f"{self.name}: source logits must be given; got None. The model has no classifier head."
                )
            kwargs["logits"] = logits
        return kwargs


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the registry (its name must be new). Returns it."""
    if method.name in _REGISTRY:
        raise ValueError(f"register: method name must be unique; {method.name!r} is already registered.")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method called ``name``.

    Raises:
        InputError: unknown name (the message lists the known ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        scores = sorted(k for k, m in _REGISTRY.items() if not m.members)
        ensembles = sorted(k for k, m in _REGISTRY.items() if m.members)
        more = f" or an ensemble {ensembles}" if ensembles else ""
        raise InputError(f"get_method: method must be one of {scores}{more}; got {name!r}.") from None


register(
    Method(
        name="lead",
        fn=lead_score,
        terms=lead_terms,
        needs_features=True,
        needs_logits=False,
        # every knob with its default (LeadParams, the one definition), so rankings and MLflow record the values used
        params=LeadParams().as_params(),
        reference="Hu et al., LEAD: Exploring Logit Space Evolution for Model Selection, CVPR 2024",
    )
)

register(
    Method(
        name="logme",
        fn=logme,
        needs_features=True,
        needs_logits=False,
        reference="You et al., LogME: Practical Assessment of Pre-trained Models for Transfer Learning, ICML 2021",
    )
)
register(
    Method(
        name="leep",
        fn=leep,
        terms=leep_terms,
        needs_features=False,
        needs_logits=True,
        reference=(
            "Nguyen et al., LEEP: A New Measure to Evaluate Transferability of Learned Representations, ICML 2020"
        ),
    )
)
register(
    Method(
        name="nce",
        fn=nce,
        terms=nce_terms,
        needs_features=False,
        needs_logits=True,
        reference="Tran et al., Transferability and Hardness of Supervised Classification Tasks, ICCV 2019",
    )
)
register(
    Method(
        name="nleep",
        fn=nleep,
        terms=nleep_terms,
        needs_features=True,
        needs_logits=False,
        min_samples=2 * COMPONENTS_PER_CLASS,
        params={"variance": VARIANCE, "components_per_class": COMPONENTS_PER_CLASS, "seed": SEED},
        reference="Li et al., Ranking Neural Checkpoints, CVPR 2021",
    )
)
register(
    Method(
        name="hscore",
        fn=hscore,
        needs_features=True,
        needs_logits=False,
        reference=(
            "Bao et al., An Information-Theoretic Approach to Transferability in Task Transfer Learning, ICIP 2019; "
            "regularised: Ibrahim et al., Newer is not always better: Rethinking transferability metrics, "
            "their peculiarities, stability and performance, ECML-PKDD 2022"
        ),
    )
)
register(
    Method(
        name="sfda",
        fn=sfda,
        terms=sfda_terms,
        needs_features=True,
        needs_logits=False,
        scale_free=False,  # the regularisation exp(-a * sigma(S_B)) depends on the largest eigenvalue's size
        reference=(
            "Shao et al., Not All Models Are Equal: Predicting Model Transferability in a Self-challenging "
            "Fisher Space, ECCV 2022"
        ),
    )
)
register(
    Method(
        name="gbc",
        fn=gbc,
        needs_features=True,
        needs_logits=False,
        min_samples=N_COMPONENTS,
        params={"n_components": N_COMPONENTS, "gaussian": "spherical"},
        reference="Pándy et al., Transferability Estimation using Bhattacharyya Class Separability, CVPR 2022",
    )
)
register(
    Method(
        name="transrate",
        fn=transrate,
        needs_features=True,
        needs_logits=False,
        scale_free=False,  # the coding rate's distortion eps is absolute
        params={"eps": EPS},
        reference="Huang et al., Frustratingly Easy Transferability Estimation, ICML 2022",
    )
)

METHODS: tuple[str, ...] = tuple(_REGISTRY)


def register_ensemble(members: tuple[str, ...], how: str = "rank") -> Method:
    """Register the zoo-wide aggregation of ``members`` (:func:`lead.scoring.ensemble.aggregate`) as a
    method named ``mean-<how>:<member>:<member>...`` (e.g. ``mean-rank:logme:lead``), usable in
    ``--method`` like any score. Returns it."""
    from lead.scoring.ensemble import HOWS

    if how not in HOWS or len(members) < 2 or any(m not in METHODS for m in members):
        raise ValueError(f"register_ensemble: members must be >= 2 registered scores and how one of {HOWS}; got {members}, {how!r}.")
    first = get_method(members[0])
    return register(Method(
        name=f"mean-{how}:" + ":".join(members),
        fn=lambda **_: math.nan,
        needs_features=any(get_method(m).needs_features for m in members),
        needs_logits=all(get_method(m).needs_logits for m in members),
        min_samples=min(get_method(m).min_samples for m in members),
        params={"members": list(members), "how": how},
        reference="rank aggregation of " + ", ".join(members) + " (docs/benchmarks.md, the selection protocol)",
        members=tuple(members),
        how=how,
        scale_free=all(get_method(m).scale_free for m in members),
    ))


#: The ensembles measured by the selection protocol (benchmarks/select_default.py); not part of ``all``.
ENSEMBLES: tuple[str, ...] = tuple(register_ensemble(m, h).name for m, h in (
    (("logme", "lead"), "rank"),
    (("logme", "nleep"), "rank"),
    (("logme", "lead", "nleep"), "rank"),
    (("logme", "lead", "gbc"), "rank"),
    (("logme", "lead", "leep"), "rank"),
    (("logme", "lead", "nleep", "gbc"), "rank"),
    (("logme", "lead"), "z"),
    (("logme", "lead", "nleep"), "z"),
))
#: What `lead rank` computes when no --method is given; the first one ranks, the others are computed
#: beside it. Chosen by the leave-one-target-out protocol over every committed suite (13 targets,
#: benchmarks/select_default.py, docs/benchmarks.md): LEAD (scale-free, C = 100) had the best held-out
#: weighted tau; LogME, the most-used baseline and scale-free too, is computed beside it as a second opinion.
DEFAULT_METHODS: tuple[str, ...] = ("lead", "logme")

from lead.scoring.ranking import Ranking, rank_models  # noqa: E402  (the one ranking path; imports the registry lazily)

__all__ = [
    "Ranking",
    "rank_models",
    "DEFAULT_METHODS",
    "ENSEMBLES",
    "METHODS",
    "LeadParams",
    "LeadResult",
    "Method",
    "gbc",
    "get_method",
    "hscore",
    "lead_details",
    "lead_score",
    "leep",
    "logme",
    "nce",
    "nleep",
    "register",
    "register_ensemble",
    "sfda",
    "transrate",
]
