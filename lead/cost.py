"""What a model costs to deploy, beside its score: parameters, FLOPs per image, throughput, the Pareto front.

- **Parameters**: ``sum(p.numel() for p in model.parameters())`` of the model as it is loaded (its source
  head included; a headless model has none).
- **FLOPs per image**: one forward pass (``model(x)``: features and source head) of one image at the zoo
  entry's input size, counted by torch's own ``torch.utils.flop_counter.FlopCounterMode``. It counts a
  multiply-add as 2 FLOPs (a matmul of (m, k) by (k, n) is 2 m k n) and counts the operators it knows
  (convolutions, matmuls, attention); element-wise operators (activations, normalisation, pooling) are
  not counted. Half of it is the "MACs" some papers and timm's tables report.
- **Images per second**: measured during extraction on its device (:mod:`lead.extract`): images over the
  seconds spent in the model's forward passes, decoding excluded.
- **Pareto front**: the models no other model beats on both axes at once, score (higher is better)
  and cost (lower is better): :func:`pareto_front`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata

from lead.errors import InputError


@dataclass(frozen=True)
class ModelCost:
    """A model's size and compute.

    Attributes:
        params: parameters, an int >= 0.
        flops: FLOPs of one image's forward pass at ``input_size`` (FlopCounterMode; multiply-add = 2).
        input_size: (H, W) in pixels.
    """

    params: int
    flops: int
    input_size: tuple[int, int]

    @property
    def gflops(self) -> float:
        """FLOPs per image in units of 1e9."""
        return self.flops / 1e9

    def to_dict(self) -> dict:
        return {"params": self.params, "flops": self.flops, "input_size": list(self.input_size)}

    @classmethod
    def from_dict(cls, doc: Mapping) -> ModelCost:
        """The inverse of :meth:`to_dict`.

        Raises:
            KeyError, TypeError, ValueError: ``doc`` is not such a dict.
        """
        h, w = doc["input_size"]
        return cls(params=int(doc["params"]), flops=int(doc["flops"]), input_size=(int(h), int(w)))


def count_params(model) -> int:
    """Parameters of a ``torch.nn.Module``: ``sum(p.numel() for p in model.parameters())``."""
    return int(sum(p.numel() for p in model.parameters()))


def count_flops(model, input_size: tuple[int, int] | int, *, channels: int = 3) -> int:
    """FLOPs of ``model(x)`` for one image x of shape (1, channels, H, W), counted by torch's
    ``FlopCounterMode`` (a multiply-add counts 2). The model runs in eval mode under ``torch.no_grad`` on the
    device of its parameters (a meta-device model costs no compute); its mode is restored after.

    Raises:
        InputError: ``input_size`` not one or two positive ints.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    size = _size(input_size)
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    x = torch.zeros(1, channels, *size, device=device)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


def model_cost(model, input_size: tuple[int, int] | int) -> ModelCost:
    """:class:`ModelCost` of a loaded model (weights do not matter: only shapes do)."""
    size = _size(input_size)
    return ModelCost(params=count_params(model), flops=count_flops(model, size), input_size=size)


def spec_cost(spec) -> ModelCost:
    """:class:`ModelCost` of a zoo entry, without its weights: timm builds the architecture (with the
    entry's ``num_classes`` when given) on the meta device, where counting costs no compute. For a cached
    extraction, whose model is not loaded. A ``torchvision:`` entry is built by torchvision, on the meta
    device too.

    Raises:
        whatever timm or torchvision raise for an unknown architecture.
    """
    return _spec_cost(*_cost_inputs(spec))


def _cost_inputs(spec) -> tuple[str, str, int | None, tuple[int, int]]:
    """What a spec's cost depends on: its builder (``torchvision`` or timm), architecture, head size and
    input size (the arguments of :func:`_spec_cost`)."""
    scheme = "torchvision" if spec.scheme == "torchvision" else "timm"
    return scheme, spec.arch, getattr(spec, "num_classes", None), tuple(int(v) for v in _size(spec.input_size))


#: Bumped when the counting itself changes (what :func:`count_flops` counts), so stored costs are recounted.
COST_VERSION = 1
#: The libraries whose code decides an architecture's shapes and the counted FLOPs.
_COST_LIBRARIES = ("torch", "timm", "torchvision")


def cost_key(spec) -> str:
    """The key of a spec's cost in a persistent cache: sha256 (hex) of what :func:`spec_cost` depends on
    (builder, architecture, ``num_classes``, input size) and the installed versions of torch, timm and
    torchvision (``importlib.metadata``: nothing is imported). Equal keys give equal costs."""
    versions = {}
    for lib in _COST_LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    doc = {"inputs": list(_cost_inputs(spec)), "versions": versions, "cost_version": COST_VERSION}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@lru_cache(maxsize=256)
def _spec_cost(scheme: str, arch: str, num_classes: int | None, input_size: tuple[int, int]) -> ModelCost:
    import torch

    with torch.device("meta"):
        if scheme == "torchvision":
            import torchvision

            from lead.zoo import wrap_torchvision_classifier

            model = wrap_torchvision_classifier(torchvision.models.get_model(arch, weights=None))
        else:
            import timm

            model = timm.create_model(arch, pretrained=False, **({} if num_classes is None else {"num_classes": num_classes}))
    return model_cost(model, input_size)


def pareto_front(points: Mapping[str, tuple[float, float]]) -> dict[str, bool]:
    """Which models are on the score-versus-cost Pareto front.

    A model is on the front when no other model has a score at least as high and a cost at least as
    low with one of the two strictly better. Models with the same score and cost are both on it (or both
    off). A model whose score or cost is NaN (not scored, cost unknown) is off the front and does not
    dominate anyone.

    Args:
        points: ``{model: (score, cost)}``: score higher-is-better, cost lower-is-better (e.g. GFLOPs).
    Returns:
        ``{model: on_front}``.
    """
    finite = {k: (float(s), float(c)) for k, (s, c) in points.items() if _finite(s) and _finite(c)}
    out = {}
    for k in points:
        if k not in finite:
            out[k] = False
            continue
        s, c = finite[k]
        out[k] = not any(
            (s2 >= s and c2 <= c) and (s2 > s or c2 < c) for j, (s2, c2) in finite.items() if j != k
        )
    return out


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _size(input_size) -> tuple[int, int]:
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    try:
        h, w = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise InputError(f"input_size must be one or two positive ints (H, W); got {input_size!r}.") from None
    if h < 1 or w < 1:
        raise InputError(f"input_size must be one or two positive ints (H, W); got {input_size!r}.")
    return (h, w)


def check_limits(cost: ModelCost | None, *, max_params: float | None = None, max_gflops: float | None = None) -> str:
    """Why a model is left out by ``--max-params``/``--max-gflops``, or "" when it fits (or no limit is set).

    A model whose cost is unknown (None) while a limit is set is left out too (it cannot be shown to fit).

    Raises:
        InputError: a limit that is not a number > 0.
    """
    for name, limit in (("max_params", max_params), ("max_gflops", max_gflops)):
        if limit is not None and not (isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit > 0):
            raise InputError(f"{name} must be a number > 0; got {limit!r}.")
    if max_params is None and max_gflops is None:
        return ""
    if cost is None:
        return "its cost could not be counted, so it cannot be shown to fit --max-params/--max-gflops"
    if max_params is not None and cost.params > max_params:
        return f"{cost.params:,} parameters, over --max-params {max_params:,.0f}"
    if max_gflops is not None and cost.gflops > max_gflops:
        return f"{cost.gflops:.3g} GFLOPs per image, over --max-gflops {max_gflops:g}"
    return ""
