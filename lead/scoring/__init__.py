"""Transferability scores: arrays in, one float out, higher is better.

``METHODS`` lists the registered method ids; ``get_method(name)`` returns a :class:`Method` that says
what it needs (pre-logit features, source logits or both) and computes
``method(features=..., logits=..., labels=...) -> float``. Baselines register here the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lead.errors import InputError
from lead.scoring.lead import LeadResult, lead_details, lead_score


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
        params: the knobs it runs with, logged as MLflow params.
        reference: the paper.
    """

    name: str
    fn: Callable[..., float]
    needs_features: bool
    needs_logits: bool
    higher_is_better: bool = True
    min_classes: int = 2
    params: dict = field(default_factory=dict)
    reference: str = ""

    def __call__(self, *, labels, features=None, logits=None) -> float:
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
        return float(self.fn(labels=labels, **kwargs, **self.params))


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
        raise InputError(f"get_method: method must be one of {sorted(_REGISTRY)}; got {name!r}.") from None


register(
    Method(
        name="lead",
        fn=lead_score,
        needs_features=True,
        needs_logits=False,
        reference="Hu et al., LEAD: Exploring Logit Space Evolution for Model Selection, CVPR 2024",
    )
)

METHODS: tuple[str, ...] = tuple(_REGISTRY)

__all__ = ["METHODS", "LeadResult", "Method", "get_method", "lead_details", "lead_score", "register"]
