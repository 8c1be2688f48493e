"""The dataset registry: the datasets a store re-ranks every night, in ``<store>/registry/datasets.json``.

One JSON document ``{"version": 1, "datasets": [entry, ...]}``; an entry is
``{"name", "path", "fingerprint", "n_samples", "n_classes", "registered_at"}`` (``registered_at`` in
ISO 8601, UTC). Every change holds an inter-process file lock (``datasets.json.lock``) around the
read-modify-write and replaces the file atomically (``storage.files.atomic_write``), so two processes
registering at once both land and a reader never sees half a file.

This module only stores entries; validating a dataset (``lead.data``) and announcing it (the Prefect
event) happen in ``flows.registry``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from lead.data import check_name
from lead.errors import InputError
from storage.files import atomic_write
from storage.store import Store

REGISTRY_VERSION = 1
#: Seconds to wait for another process's change of the registry before giving up.
LOCK_TIMEOUT_S = 60


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset.

    Attributes:
        name: unique name in the store (a plain name, no '/'); the MLflow experiment is ``lead/<name>``.
        path: absolute path of the ImageFolder directory or CSV manifest.
        fingerprint: content fingerprint when registered (``ImageDataset.fingerprint``).
        n_samples, n_classes: size when registered.
        registered_at: ISO 8601 time of registration, UTC.
    """

    name: str
    path: str
    fingerprint: str
    n_samples: int
    n_classes: int
    registered_at: str


def registry_path(store: str | Path) -> Path:
    """The registry file of ``store``: ``<store>/registry/datasets.json``."""
    return Store.of(store).registry_file


def _lock(store: str | Path):
    from filelock import FileLock

    path = registry_path(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT_S)


def _read(path: Path) -> list[DatasetEntry]:
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return [DatasetEntry(**e) for e in doc["datasets"]]
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(
            f"registry: {path} must be a dataset registry (JSON with a 'datasets' list); got {type(err).__name__}: {err}. "
            "Fix or delete the file and register the datasets again."
        ) from err


def _write(path: Path, entries: list[DatasetEntry]) -> None:
    doc = {"version": REGISTRY_VERSION, "datasets": [asdict(e) for e in sorted(entries, key=lambda e: e.name)]}
    text = json.dumps(doc, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def list_datasets(store: str | Path) -> list[DatasetEntry]:
    """The registered datasets of ``store``, sorted by name (empty when none was registered).

    Raises:
        InputError: the registry file exists but is not a registry.
    """
    return sorted(_read(registry_path(store)), key=lambda e: e.name)


def add_dataset(store: str | Path, entry: DatasetEntry) -> DatasetEntry:
    """Record ``entry`` in the registry of ``store``. Returns it.

    Raises:
        InputError: the name is not a plain name, or a dataset of that name is already registered.
        filelock.Timeout: another process held the registry for more than ``LOCK_TIMEOUT_S``.
    """
    check_name(entry.name, what="datasets add")
    path = registry_path(store)
    with _lock(store):
        entries = _read(path)
        existing = next((e for e in entries if e.name == entry.name), None)
        if existing is not None:
            raise InputError(
                f"datasets add: name must not be registered already; got {entry.name!r}, registered on "
                f"{existing.registered_at} for {existing.path}. Choose another name, or `lead datasets remove {entry.name}` first."
            )
        _write(path, [*entries, entry])
    return entry


def remove_dataset(store: str | Path, name: str) -> DatasetEntry:
    """Remove the dataset ``name`` from the registry of ``store`` (its rankings, logits and MLflow runs
    stay). Returns the removed entry.

    Raises:
        InputError: no dataset of that name is registered.
    """
    path = registry_path(store)
    with _lock(store):
        entries = _read(path)
        found = next((e for e in entries if e.name == name), None)
        if found is None:
            known = ", ".join(e.name for e in entries) or "none"
            raise InputError(f"datasets remove: name must be a registered dataset; got {name!r}. Registered: {known}.")
        _write(path, [e for e in entries if e.name != name])
    return found
