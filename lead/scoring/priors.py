"""Static priors: dataset-agnostic rankings a transferability score must beat to be worth computing.

Singh, Hess and Vanschoren ("How NOT to benchmark your SITE metric", 2025) show that on benchmarks
where one model family wins everywhere a dataset-agnostic heuristic ranks as well as any score. Every
``lead bench`` table therefore carries two reference rows:

- ``prior:params``, "bigger is better": the model's parameter count (the zoo's ``params:``, else counted
  from the timm architecture with its source head);
- ``prior:source-accuracy``: the model's own accuracy on its pre-training task (the zoo's
  ``source_accuracy:``), where the zoo gives it for every model.
"""

from __future__ import annotations

import math
from functools import lru_cache

PRIORS = ("prior:params", "prior:source-accuracy")


@lru_cache(maxsize=256)
def _counted(arch: str, num_classes: int | None) -> int:
    import timm

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = timm.create_model(arch, pretrained=False, **kwargs)
    return int(sum(p.numel() for p in model.parameters()))


def parameter_count(spec) -> int:
    """The parameter count of a zoo entry (``spec.params``, else counted from ``timm.create_model(spec.arch)``,
    no weights loaded). Raises whatever timm raises for an unknown architecture."""
    if getattr(spec, "params", None) is not None:
        return int(spec.params)
    return _counted(spec.arch, getattr(spec, "num_classes", None))


def prior_scores(models: list[str], specs: dict) -> dict[str, dict[str, float]]:
    """Scores of the static priors for ``models`` (``specs``: model name -> zoo entry).

    Returns:
        ``{prior: {model: value}}`` for each prior of :data:`PRIORS` that every model has (``params``
        always when the architectures are known; ``source-accuracy`` only when every entry gives it).
        A model without a zoo entry, or an architecture timm does not know, gets NaN.
    """
    out: dict[str, dict[str, float]] = {}
    params = {}
    for m in models:
        try:
            params[m] = float(parameter_count(specs[m]))
        except Exception:  # unknown model or architecture: the prior has no value for it
            params[m] = math.nan
    out["prior:params"] = params
    accs = {m: getattr(specs.get(m), "source_accuracy", None) for m in models}
    if models and all(a is not None for a in accs.values()):
        out["prior:source-accuracy"] = {m: float(a) for m, a in accs.items()}
    return out
