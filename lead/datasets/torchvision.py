"""``torchvision:<Class>[:<split>]``: a torchvision dataset, downloaded and written once as an ImageFolder of PNGs.

Needs the internet on first use; materialised under the store's ``datasets/torchvision-<class>[-<split>]``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from lead.data import ImageDataset, check_name
from lead.datasets.folder import image_folder
from lead.errors import DatasetError

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


def parse(spec: str) -> str | None:
    """``spec`` when it starts with ``torchvision:``, else None (the class is checked when it is loaded)."""
    return spec if spec.startswith(TORCHVISION_PREFIX) else None


def load(ref: str, datasets_dir: Path, name: str | None) -> ImageDataset:
    """The materialised folder, named ``name`` or the folder's name (``torchvision-cifar10-train``)."""
    folder = materialise_torchvision(ref, datasets_dir)
    return image_folder(folder, name=name or folder.name)
