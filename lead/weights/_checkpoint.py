"""What several weight sources share: building a timm architecture, reading a checkpoint file safely,
and the sha256 of a checkpoint's bytes (cached on path, size and modification time)."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from lead.data import file_digest
from lead.errors import ModelLoadError, strip_ansi

if TYPE_CHECKING:
    from lead.zoo import ModelSpec

#: Suffixes of checkpoint files (safetensors, PyTorch).
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def as_written(value: str, base: Path) -> str:
    """``parse`` of a source whose value names remote weights: kept as written, checked when loaded."""
    return value


def named_digest(scheme: str, spec: ModelSpec, version: str) -> str:
    """Identity of remote weights: sha256 hex of ``<scheme>:<arch>.<value>@<library version>`` (the bytes
    are not here; the name and the library that resolves it identify them)."""
    return hashlib.sha256(f"{scheme}:{spec.arch}.{spec.source}@{version}".encode()).hexdigest()


@lru_cache(maxsize=256)
def _digest_cached(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(Path(path))


def checkpoint_digest(path: Path, spec: ModelSpec) -> str:
    """sha256 hex of the checkpoint's bytes, computed once per (path, size, mtime) in this process.

    Raises:
        ModelLoadError: the file does not exist.
    """
    try:
        st = path.stat()
    except OSError as err:
        raise ModelLoadError(
            f"model {spec.name!r}: checkpoint {path} must exist; got {err.strerror}. Fix 'weights' in the zoo file."
        ) from err
    return _digest_cached(str(path), st.st_size, st.st_mtime_ns)


def create(spec: ModelSpec, *, tag: str | None = None, **kwargs):
    """``timm.create_model`` of ``spec.arch`` (``arch.tag`` when ``tag`` is given).

    Raises:
        ModelLoadError: unknown architecture, or timm cannot build it.
    """
    import timm

    try:
        return timm.create_model(f"{spec.arch}.{tag}" if tag else spec.arch, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ModelLoadError(
                f"model {spec.name!r}: arch must be a timm architecture; got {spec.arch!r}. See timm.list_models()."
            ) from err
        raise ModelLoadError(f"model {spec.name!r}: timm could not build {spec.arch!r}: {err}") from err


def num_classes_kwargs(spec: ModelSpec) -> dict:
    """``{"num_classes": n}`` when the zoo entry sets it, else ``{}`` (timm's default head)."""
    return {"num_classes": spec.num_classes} if spec.num_classes is not None else {}


@lru_cache(maxsize=1)
def checkpoint_safe_globals() -> tuple:
    """Harmless types a training checkpoint holds beside its state dict, allowed to torch's weights-only
    loader: ``argparse.Namespace`` (the training arguments) and numpy scalars and dtypes (a best
    accuracy saved as ``np.float64``). They carry data, not code; a pickled module stays refused."""
    import argparse

    import numpy as np

    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return (argparse.Namespace, np._core.multiarray.scalar, np.dtype, *dtypes)


#: torch's weights-only refusal names its real cause after this marker (the text before it is generic advice).
_WEIGHTS_UNPICKLER = re.compile(r"WeightsUnpickler error: (.+?)(?: Please use `torch\.serialization|\n|$)")


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(strip_ansi(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_state_dict(path: Path, model_name: str) -> dict:
    """Tensors by name from a ``.safetensors`` file or a PyTorch file (a state dict, or a training
    checkpoint holding one under ``state_dict``, ``model`` or ``state_dict_ema`` with harmless extras such
    as the epoch, the optimizer's state and ``argparse.Namespace`` arguments); ``module.`` prefixes removed.

    Raises:
        ModelLoadError: no such file; a pickled object other than tensors and the types of
            :func:`checkpoint_safe_globals` (a whole ``torch.save(model)``: the message names the class and
            says to re-save ``model.state_dict()``); an unreadable or truncated file.
    """
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            with torch.serialization.safe_globals(list(checkpoint_safe_globals())):
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise ModelLoadError(f"model {model_name!r}: checkpoint {path} must exist; got no such file.") from err
    except Exception as err:  # corrupt file, pickle with code, wrong format
        refused = _WEIGHTS_UNPICKLER.search(strip_ansi(str(err)))
        if refused:
            raise ModelLoadError(
                f"model {model_name!r}: checkpoint {path} must hold tensors only (a state dict, or a training "
                f"checkpoint with one under 'state_dict'); got an object the safe loader refuses "
                f"({_one_line(refused.group(1))}). Re-save the weights with torch.save(model.state_dict(), path) "
                "or safetensors."
            ) from err
        cause = _one_line(str(err))
        raise ModelLoadError(
            f"model {model_name!r}: checkpoint {path} must be a readable state dict (PyTorch .pth/.pt or .safetensors); "
            f"got {type(err).__name__}{': ' + cause if cause else ''}. Check that the file is complete and of that format."
        ) from err
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not sd:
        raise ModelLoadError(f"model {model_name!r}: checkpoint {path} must hold a state dict; got {type(sd).__name__}.")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def infer_num_classes(classifier: str | tuple[str, ...] | list[str], state: dict) -> int:
    """The number of classes of a checkpoint: the rows of its classifier's weight, for every classifier
    name timm reports (a tuple for models with two heads: ``("head", "head_dist")`` for distilled DeiT,
    ``("head.linear", "head_dist.linear")`` for LeViT; the heads agree). 0 when the checkpoint has no
    classifier weight (a headless model). When the heads disagree, the first one's count is returned and
    loading reports the mismatched shapes."""
    names = [classifier] if isinstance(classifier, str) else list(classifier)
    for name in names:
        weight = state.get(f"{name}.weight")
        if weight is not None and getattr(weight, "ndim", 0) >= 1:
            return int(weight.shape[0])
    return 0
