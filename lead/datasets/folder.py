"""An ImageFolder directory: one sub-folder per class, images inside (nested folders allowed).

Claims a ``--dataset`` that is an existing directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from lead.data import ImageDataset, Sample, _check_nonempty, _some, check_name, image_suffixes
from lead.errors import DatasetError


def parse(spec: str) -> str | None:
    """The directory's path when ``spec`` is an existing directory, else None."""
    path = Path(spec).expanduser()
    return str(path) if path.is_dir() else None


def load(ref: str, datasets_dir: Path, name: str | None) -> ImageDataset:
    """:func:`image_folder` of the directory."""
    return image_folder(ref, name=name)


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
