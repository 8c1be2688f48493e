"""``file:<path>``: a local ``.safetensors`` or ``.pth``/``.pt`` state dict (or a training checkpoint holding one).

The path is relative to the zoo file; ``~`` and ``$VARIABLES`` are expanded when the zoo is read. The
number of classes comes from the zoo entry's ``num_classes``, else from the checkpoint's classifier. The
digest is the sha256 of the file's bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

from lead.errors import ModelLoadError
from lead.weights._checkpoint import checkpoint_digest, create, infer_num_classes, read_state_dict


def parse(value: str, base: Path) -> str:
    """The absolute path: variables and ``~`` expanded, a relative path resolved against ``base``."""
    p = Path(os.path.expandvars(value)).expanduser()
    return str((base / p).resolve() if not p.is_absolute() else p)


def digest(spec) -> str:
    """sha256 hex of the checkpoint's bytes.

    Raises:
        ModelLoadError: the file does not exist.
    """
    return checkpoint_digest(Path(spec.source), spec)


def _some(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


def load(spec):
    """The timm architecture with the checkpoint's tensors loaded strictly, in eval mode.

    Raises:
        ModelLoadError: no such file, an unreadable or unsafe file, or tensors that do not fit the
            architecture (the message counts and names missing, unexpected and mis-shaped keys).
    """
    path = Path(spec.source)
    if not path.is_file():
        raise ModelLoadError(
            f"model {spec.name!r}: checkpoint {path} must exist; got no such file. Put the checkpoint there "
            "or fix 'weights' in the zoo file."
        )
    state = read_state_dict(path, spec.name)
    num_classes = spec.num_classes
    if num_classes is None:
        num_classes = infer_num_classes(create(spec, pretrained=False).pretrained_cfg.get("classifier", "fc"), state)
    model = create(spec, pretrained=False, num_classes=num_classes)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        raise ModelLoadError(
            f"model {spec.name!r}: checkpoint {path} must fit {spec.arch}; got {len(missing)} missing keys ({_some(missing)}), "
            f"{len(unexpected)} unexpected keys ({_some(unexpected)}), {len(mismatched)} of another shape ({_some(mismatched)}). "
            "Check 'arch' and 'num_classes' in the zoo file."
        )
    model.load_state_dict(state, strict=True)
    return model.eval()
