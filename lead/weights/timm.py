"""``timm:<tag>``: timm's own pretrained weights ``<arch>.<tag>``, downloaded from the Hugging Face hub.

The digest is the sha256 of ``timm:<arch>.<tag>@<timm version>`` (the bytes are remote: the tag and the
library version that resolves it name them).
"""

from __future__ import annotations

from lead.errors import ModelLoadError
from lead.weights._checkpoint import as_written, create, named_digest, num_classes_kwargs

#: The tag as written (checked when the weights are loaded).
parse = as_written


def digest(spec) -> str:
    """sha256 hex of ``timm:<arch>.<tag>@<timm.__version__>``."""
    import timm

    return named_digest("timm", spec, timm.__version__)


def load(spec):
    """``timm.create_model("<arch>.<tag>", pretrained=True)`` in eval mode.

    Raises:
        ModelLoadError: unknown architecture, or the weights cannot be downloaded (offline, unknown tag).
    """
    try:
        model = create(spec, tag=spec.source, pretrained=True, **num_classes_kwargs(spec))
    except ModelLoadError:
        raise
    except Exception as err:  # network errors surface as many exception types
        raise ModelLoadError(
            f"model {spec.name!r}: timm weights {spec.arch}.{spec.source} must be downloadable; got "
            f"{type(err).__name__}: {str(err)[:200]}. Check the network/HF_HUB_OFFLINE, or use file:<path>."
        ) from err
    return model.eval()
