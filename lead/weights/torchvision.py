"""``torchvision:<weights>``: torchvision's own model ``arch`` with its weights enum value (``DEFAULT``, ``IMAGENET1K_V1``, ...).

For the few architectures timm lacks (googlenet, mnasnet1_0, mobilenet_v2); downloads like ``timm:``. The
model is wrapped to offer timm's ``forward_features``/``forward_head``. The digest is the sha256 of
``torchvision:<arch>.<weights>@<torchvision version>``.
"""

from __future__ import annotations

from lead.errors import ModelLoadError
from lead.weights._checkpoint import as_written, named_digest

#: The weights name as written (checked when the weights are loaded).
parse = as_written


def digest(spec) -> str:
    """sha256 hex of ``torchvision:<arch>.<weights>@<torchvision.__version__>``."""
    import torchvision

    return named_digest("torchvision", spec, torchvision.__version__)


def load(spec):
    """Build torchvision's ``spec.arch`` with weights ``spec.source`` and wrap it with :func:`wrap_classifier`.

    Raises:
        ModelLoadError: unknown architecture or weights name, or weights that cannot be downloaded.
    """
    import torchvision

    try:
        model = torchvision.models.get_model(spec.arch, weights=spec.source)
    except (ValueError, KeyError) as err:
        raise ModelLoadError(
            f"model {spec.name!r}: torchvision arch and weights must exist; got {spec.arch}/{spec.source} ({err}). "
            "See torchvision.models.list_models() and the model's weights enum."
        ) from err
    except Exception as err:  # network errors surface as many exception types
        raise ModelLoadError(
            f"model {spec.name!r}: torchvision weights {spec.arch}/{spec.source} must be downloadable; got "
            f"{type(err).__name__}: {str(err)[:200]}. Check the network, or save them and use file:<path>."
        ) from err
    try:
        return wrap_classifier(model)
    except ValueError as err:
        raise ModelLoadError(f"model {spec.name!r}: {err}") from err


def wrap_classifier(model):
    """Give a torchvision classifier timm's feature API, in eval mode.

    The final classifier (attribute ``fc``, ``classifier``, ``heads`` or ``head``) is taken out:
    ``forward_features(x)`` returns its input (the pooled, flattened pre-logit features, shape (B, D)),
    ``forward_head(f, pre_logits=True)`` returns ``f`` and ``forward_head(f)`` the logits (B, Cs);
    ``num_classes`` is Cs. ``forward(x)`` equals the original model's output.

    Raises:
        ValueError: the model has none of those attributes.
    """
    import torch

    head_name = next((n for n in ("fc", "classifier", "heads", "head") if hasattr(model, n)), None)
    if head_name is None:
        raise ValueError(f"torchvision model {type(model).__name__} must have an fc/classifier/head attribute; got none.")
    head = getattr(model, head_name)
    setattr(model, head_name, torch.nn.Identity())
    linear = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]

    class TorchvisionClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = model, head
            self.num_classes = linear[-1].out_features if linear else 0

        def forward_features(self, x):
            return self.body(x)

        def forward_head(self, x, pre_logits: bool = False):
            return x if pre_logits else self.head(x)

        def forward(self, x):
            return self.head(self.body(x))

    return TorchvisionClassifier().eval()
