"""Labelled image datasets: samples, the content fingerprint, names and the checks a ranking needs.

A dataset is a list of samples (image file, class name) plus a content fingerprint that changes
when, and only when, an image's bytes or a label change (sample order and file names do not count).
Where datasets come from (ImageFolder directories, CSV manifests, the built-in demo sets, torchvision)
is a registry of sources, one module each: :mod:`lead.datasets`; :func:`resolve_dataset` goes through
it, and the readers are importable from here as before (``image_folder``, ``csv_manifest``, ...).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from lead.errors import DatasetError, InputError

#: Bytes read at a time when hashing files.
HASH_CHUNK = 1 << 20
#: Files named in a note about ignored files (the count is always complete). Our choice.
MAX_NAMED = 10


@lru_cache(maxsize=1)
def image_suffixes() -> tuple[str, ...]:
    """File suffixes read as images (lower case, sorted): every extension Pillow registers for a format it
    can open (``PIL.Image.registered_extensions()``, e.g. ``.jfif``, ``.jpe``, ``.qoi``), except formats
    Pillow cannot decode by itself: stub formats that need an external handler (BUFR, GRIB, HDF5,
    WMF/EMF), MPEG (identified, never decoded) and EPS/PS without Ghostscript."""
    from PIL import EpsImagePlugin, Image, ImageFile

    Image.init()
    external = {"MPEG"} | (set() if EpsImagePlugin.has_ghostscript() else {"EPS"})

    def decodable(fmt: str) -> bool:
        if fmt not in Image.OPEN or fmt in external:
            return False
        factory = Image.OPEN[fmt][0]  # a class, or a function (JPEG's) that returns one
        return not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))

    return tuple(sorted(ext.lower() for ext, fmt in Image.registered_extensions().items() if decodable(fmt)))


def _some(names: Sequence[str]) -> str:
    """``a, b, c`` for at most ``MAX_NAMED`` names, then ``and N more``."""
    more = f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else ""
    return ", ".join(names[:MAX_NAMED]) + more


@dataclass(frozen=True)
class Sample:
    """One labelled image: ``sample_id`` is its path relative to the dataset root (posix form)."""

    sample_id: str
    path: Path
    label: str


@dataclass
class ImageDataset:
    """A labelled image dataset.

    Attributes:
        name: short name, used for MLflow experiments (``lead/<name>``) and the rankings table.
        root: folder the sample ids are relative to.
        samples: the samples, in a stable order (sorted by sample id).
        classes: sorted class names; label index i in the logits files means ``classes[i]``.
        notes: what was ignored while reading it (empty class folders, duplicate manifest rows).
    """

    name: str
    root: Path
    samples: list[Sample]
    notes: list[str] = field(default_factory=list)
    classes: list[str] = field(init=False)
    _fingerprint: str | None = field(default=None, init=False, repr=False)
    #: The fingerprint function of the dataset's source (:class:`lead.datasets.DatasetSource`); None:
    #: :func:`content_digest`.
    digest: Callable[[ImageDataset], str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.samples = sorted(self.samples, key=lambda s: s.sample_id)
        self.classes = sorted({s.label for s in self.samples})

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def label_indices(self) -> np.ndarray:
        """Label index of every sample, shape (N,), int32, in ``classes`` order."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[s.label] for s in self.samples], dtype=np.int32)

    def fingerprint(self) -> str:
        """Content fingerprint (the source's digest, :func:`content_digest` for every built-in source),
        computed once per object. Returns a 64-character hex string."""
        if self._fingerprint is None:
            self._fingerprint = (self.digest or content_digest)(self)
        return self._fingerprint


def content_digest(dataset: ImageDataset) -> str:
    """sha256 over the sorted (sha256 of file bytes, label) pairs of ``dataset``'s samples, one
    ``<hex>\t<label>\n`` line each: order-independent and independent of file names and locations.

    Raises:
        DatasetError: an image file cannot be read.
    """
    pairs = sorted(f"{file_digest(s.path)}\t{s.label}" for s in dataset.samples)
    h = hashlib.sha256()
    for p in pairs:
        h.update(p.encode())
        h.update(b"\n")
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 hex digest of a file's bytes.

    Raises:
        DatasetError: the file cannot be read.
    """
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
                h.update(chunk)
    except OSError as err:
        raise DatasetError(f"dataset: image file must be readable; got {err.strerror} for {path}.") from err
    return h.hexdigest()


def check_name(name: str, *, what: str) -> str:
    """Refuse names that would escape the store when used as a path component.

    Raises:
        InputError: empty, '.', '..', containing '/', '\\' or NUL, or absolute.
    """
    if (
        not isinstance(name, str)
        or not name.strip()
        or name in (".", "..")
        or any(c in name for c in ("/", "\\", "\x00"))
        or os.path.isabs(name)
    ):
        raise InputError(
            f"{what}: name must be a plain name without '/', '\\' or '..'; got {name!r}. Choose another name."
        )
    return name


def _check_nonempty(ds: ImageDataset, source: Path) -> ImageDataset:
    if len(ds) == 0:
        if source.is_file():
            raise DatasetError(f"dataset {ds.name!r}: manifest {source} must list images; got a header and no rows.")
        raise DatasetError(f"dataset {ds.name!r}: {source} must contain images in one sub-folder per class; got none. "
                           f"Image suffixes read (those Pillow opens): {_some(image_suffixes())}.")
    return ds


def check_rankable(ds: ImageDataset, min_per_class: int = 2) -> ImageDataset:
    """A ranking needs at least 2 classes and ``min_per_class`` images in every class.

    Raises:
        DatasetError: naming the classes that fall short.
    """
    if len(ds.classes) < 2:
        raise DatasetError(
            f"dataset {ds.name!r}: must have at least 2 classes; got {len(ds.classes)} ({ds.classes}). "
            "Add a sub-folder (or manifest label) per class."
        )
    counts = {c: 0 for c in ds.classes}
    for s in ds.samples:
        counts[s.label] += 1
    small = sorted(c for c, n in counts.items() if n < min_per_class)
    if small:
        raise DatasetError(
            f"dataset {ds.name!r}: every class must have at least {min_per_class} images; got fewer for {small[:10]}"
            f"{' ...' if len(small) > 10 else ''}. Add images to those classes or remove them."
        )
    return ds


def resolve_dataset(spec: str | Path, *, datasets_dir: str | Path, name: str | None = None) -> ImageDataset:
    """Turn a user's ``--dataset`` into a dataset through the registered sources (:func:`lead.datasets.resolve`):
    an ImageFolder directory, a ``.csv`` manifest, the name of a built-in demo set (materialised under
    ``datasets_dir`` on first use), or ``torchvision:<Class>[:<split>]`` (downloaded and materialised
    there on first use).

    Raises:
        DatasetError: no source claims ``spec`` (the message lists them), or its source cannot read it.
    """
    from lead.datasets import resolve

    return resolve(spec, datasets_dir=datasets_dir, name=name)


#: Names that moved to their source's module, importable from here as before (resolved on first use,
#: since those modules import this one).
_MOVED = {
    "image_folder": "lead.datasets.folder",
    "csv_manifest": "lead.datasets.manifest",
    **{n: "lead.datasets.demo" for n in ("ANIMAL_MNIST_CLASSES", "DEMO_DATASETS", "DemoDataset", "_animal_mnist_arrays",
                                          "animal_mnist_fewshot", "materialise_demo", "mnist_5k")},
    **{n: "lead.datasets.torchvision" for n in ("TORCHVISION_PREFIX", "materialise_torchvision")},
}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
