"""The dataset registry file: entries, errors, and two processes writing at once."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from lead.errors import InputError
from storage.registry import (
    DatasetEntry,
    add_dataset,
    list_datasets,
    registry_path,
    remove_dataset,
)


def entry(name: str, path: str = "/data/x") -> DatasetEntry:
    return DatasetEntry(name=name, path=path, fingerprint="ab" * 32, n_samples=24, n_classes=4,
                        registered_at="2026-01-01T00:00:00+00:00")


def test_add_list_remove_round_trip(tmp_path):
    assert list_datasets(tmp_path) == []
    add_dataset(tmp_path, entry("pets", "/data/pets"))
    add_dataset(tmp_path, entry("cars", "/data/cars"))
    assert [e.name for e in list_datasets(tmp_path)] == ["cars", "pets"]
    doc = json.loads(registry_path(tmp_path).read_text())
    assert doc["version"] == 1 and doc["datasets"][1] == {
        "name": "pets", "path": "/data/pets", "fingerprint": "ab" * 32, "n_samples": 24, "n_classes": 4,
        "registered_at": "2026-01-01T00:00:00+00:00"}
    assert remove_dataset(tmp_path, "pets").path == "/data/pets"
    assert [e.name for e in list_datasets(tmp_path)] == ["cars"]
    assert not list(registry_path(tmp_path).parent.glob(".*.tmp"))  # atomic writes leave no temporary file


def test_bad_names_and_duplicates_are_refused(tmp_path):
    add_dataset(tmp_path, entry("pets"))
    with pytest.raises(InputError, match=r"datasets add: name must not be registered already; got 'pets', registered on "
                                         r"2026-01-01T00:00:00\+00:00 for /data/x. Choose another name, or `lead datasets remove pets` first."):
        add_dataset(tmp_path, entry("pets"))
    for bad in ("", "..", "a/b"):
        with pytest.raises(InputError, match="datasets add: name must be a plain name"):
            add_dataset(tmp_path, entry(bad))
    with pytest.raises(InputError, match=r"datasets remove: name must be a registered dataset; got 'cars'. Registered: pets."):
        remove_dataset(tmp_path, "cars")
    registry_path(tmp_path).write_text("{not json")
    with pytest.raises(InputError, match="must be a dataset registry"):
        list_datasets(tmp_path)


def _add_many(store: str, prefix: str, n: int) -> None:
    for i in range(n):
        add_dataset(store, entry(f"{prefix}{i}"))


def test_two_processes_adding_at_once_both_land(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add_many, args=(str(tmp_path), p, 15)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(list_datasets(tmp_path)) == 30
