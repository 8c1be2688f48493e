"""Dataset sources: what a ``--dataset`` can be, one module per kind, one registry.

Each source is a :class:`DatasetSource` with three functions:

- ``parse(spec) -> ref | None``: whether this source reads the user's ``--dataset`` string, and the
  reference it keeps (a path, a name); None when the string is not for it. Cheap: no image is read.
- ``load(ref, datasets_dir, name) -> ImageDataset``: the samples (image files and labels), materialising
  anything that is not already a folder of image files under ``datasets_dir`` (the store's ``datasets/``)
  once; raises :class:`~lead.errors.DatasetError` (or :class:`~lead.errors.InputError`).
- ``digest(dataset) -> str``: the dataset's fingerprint, 64 hex digits, which keys every cached
  extraction; it must change exactly when an image or a label changes. Every built-in source leaves it
  to :func:`content_digest`, the sha256 over the sorted (sha256 of the image's bytes, label) pairs.

A ``--dataset`` goes to the first registered source whose ``parse`` claims it, in registration order:
an ImageFolder directory (:mod:`lead.datasets.folder`), a ``.csv`` manifest
(:mod:`lead.datasets.manifest`), a built-in demo name (:mod:`lead.datasets.demo`), or
``torchvision:<Class>[:<split>]`` (:mod:`lead.datasets.torchvision`). Adding a source is a module with
those functions and one :func:`register` call at the bottom of this file (docs/architecture.md,
"Adding a source").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lead.data import ImageDataset, content_digest
from lead.errors import DatasetError
from lead.registry import Registry, one_of


@dataclass(frozen=True)
class DatasetSource:
    """One registered kind of dataset.

    Attributes:
        name: a short id (``folder``, ``manifest``, ``demo``, ``torchvision``), unique.
        usage: how a user writes it, as a phrase (``"a .csv manifest (path,label)"``), or a function
            returning that phrase when it depends on what is installed; listed by ``--help`` and by the
            error for a ``--dataset`` no source claims.
        parse: ``(spec) -> ref | None``, see the module docstring.
        load: ``(ref, datasets_dir, name) -> ImageDataset``.
        digest: ``(dataset) -> str``, the fingerprint; :func:`lead.data.content_digest` by default.
    """

    name: str
    usage: str | Callable[[], str]
    parse: Callable[[str], str | None]
    load: Callable[[str, Path, str | None], ImageDataset]
    digest: Callable[[ImageDataset], str] = content_digest

    def describe(self) -> str:
        """The usage phrase."""
        return self.usage() if callable(self.usage) else self.usage


_REGISTRY: Registry[DatasetSource] = Registry("dataset source name", lambda s: s.name)


#: ``register(source) -> source``: add a dataset source after the others; ValueError when its name is taken.
register = _REGISTRY.register
#: ``unregister(name)``: remove a source (for tests that register a throwaway one); unknown ones are ignored.
unregister = _REGISTRY.unregister
#: ``sources() -> list[str]``: the registered names, in the order a ``--dataset`` is tried against them.
sources = _REGISTRY.names


def usages() -> str:
    """The registered forms as one phrase, e.g. ``an ImageFolder directory, a .csv manifest (path,label),
    a demo name (animal-mnist-fewshot, mnist-5k) or torchvision:<Class>[:<split>]`` (for ``--help``)."""
    return one_of([s.describe() for s in _REGISTRY])


def find_source(spec: str | Path) -> tuple[DatasetSource, str]:
    """The first registered source that claims ``spec``, and its reference.

    Raises:
        DatasetError: no source claims it (the message lists every registered form).
    """
    text = str(spec)
    for source in _REGISTRY:
        ref = source.parse(text)
        if ref is not None:
            return source, ref
    got = "a file of another kind" if Path(text).expanduser().exists() else "no such file or directory"
    raise DatasetError(f"dataset: {text!r} must be {usages()}; got {got}.")


def resolve(spec: str | Path, *, datasets_dir: str | Path, name: str | None = None) -> ImageDataset:
    """Turn a user's ``--dataset`` into a dataset through the registered sources (see the module docstring).

    Args:
        spec: the ``--dataset`` string (or path).
        datasets_dir: where sources materialise datasets (the store's ``datasets/``).
        name: the name to record (default: the source's, e.g. the folder or file name).
    Returns:
        The dataset; its :meth:`~lead.data.ImageDataset.fingerprint` is the source's ``digest``.
    Raises:
        DatasetError: no source claims ``spec``, or the source cannot read it.
    """
    source, ref = find_source(spec)
    dataset = source.load(ref, Path(datasets_dir), name)
    if source.digest is not content_digest:
        dataset.digest = source.digest
    return dataset


# --- the built-in sources, tried in this order; a new source is one module and one line here ---------

from lead.datasets import demo as _demo, folder as _folder, manifest as _manifest, torchvision as _torchvision  # noqa: E402

register(DatasetSource("folder", "an ImageFolder directory", _folder.parse, _folder.load))
register(DatasetSource("manifest", "a .csv manifest (path,label)", _manifest.parse, _manifest.load))
register(DatasetSource("demo", _demo.usage, _demo.parse, _demo.load))
register(DatasetSource("torchvision", "torchvision:<Class>[:<split>]", _torchvision.parse, _torchvision.load))
