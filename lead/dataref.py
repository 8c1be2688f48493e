"""A dataset reference: what a task in another process needs to open the same dataset again.

A :class:`DatasetRef` is plain (three strings and a count), picklable and JSON-able. It names the dataset
by the folder or CSV manifest it was read from (built-in and torchvision datasets: the folder they were
materialised in), so any process that sees the same file system opens the same samples, and it carries
the fingerprint computed once by the planner, so the images are not hashed again per model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lead.data import ImageDataset, csv_manifest, image_folder
from lead.errors import DatasetError


@dataclass(frozen=True)
class DatasetRef:
    """A dataset to open again.

    Attributes:
        source: absolute path of the ImageFolder directory or the ``.csv`` manifest.
        name: the name recorded for it (MLflow experiment ``lead/<name>``, the rankings table).
        fingerprint: its content fingerprint (:meth:`lead.data.ImageDataset.fingerprint`).
        n_samples: the images it listed when planned; opening it checks the count is still the same.
    """

    source: str
    name: str
    fingerprint: str
    n_samples: int

    @classmethod
    def of(cls, spec: str | Path, ds: ImageDataset) -> DatasetRef:
        """The reference of ``ds``, read from the user's ``spec`` (as :func:`lead.data.resolve_dataset`
        took it): a manifest by its own path, anything else by the folder it was read from."""
        path = Path(spec).expanduser()
        manifest = not path.is_dir() and path.suffix.lower() == ".csv"
        return cls(str(path.resolve() if manifest else ds.root), ds.name, ds.fingerprint(), len(ds))

    def open(self) -> ImageDataset:
        """The dataset, read again from ``source`` (its fingerprint is the planned one, not recomputed).

        Raises:
            DatasetError: it cannot be read, or it lists another number of images than when planned.
        """
        path = Path(self.source)
        ds = csv_manifest(path, name=self.name) if path.suffix.lower() == ".csv" and not path.is_dir() else \
            image_folder(path, name=self.name)
        if len(ds) != self.n_samples:
            raise DatasetError(f"dataset {self.name!r}: the images must not change during a ranking; it listed "
                               f"{self.n_samples} when planned and {len(ds)} now ({self.source}).")
        return ds
