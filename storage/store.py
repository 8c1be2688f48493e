"""The store: one object that owns every path under a store folder and the one atomic writer.

Layout (every path below is relative to the store's root; a *key* is such a relative posix path)::

    datasets/<name>/                                    built-in and torchvision datasets, materialised
    logits/dataset=<fp>/model=<id>/part-<key16>.parquet features and logits (storage.logits)
    rankings/dataset=<fp>/run=<run id>.parquet          one file per selection (storage.rankings)
    figures/dataset=<fp>/run=<run id>.png               the selection's figure (storage.figures)
    figures/drawn/<key>.png                             the same figure kept by what it shows (storage.figures)
    figures/history-<dataset>.png                       lead history --plot (storage.figures)
    registry/datasets.json                              the dataset registry (storage.registry)
    costs/<key32>.json                                  each architecture's parameters and FLOPs (storage.costs)
    outcomes/part-<UTC time>-<uuid8>.parquet            fine-tuned accuracies (storage.outcomes; lock .lock)
    bench/suite=<name>/run=<run id>.parquet, *.png      benchmark tables and figures (storage.bench)
    mlflow.db, mlflow-artifacts/                        the default MLflow tracking database and artifacts

A :class:`Store` is a frozen dataclass of one path: it pickles as that path, so a task in another process
gets the store root (a string) and a key, and rebuilds the same ``Store`` from them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote

from storage.files import atomic_write

#: Globs of the finished files under the root (temporary files start with '.' and end in '.tmp': never matched).
RANKINGS_GLOB = "rankings/dataset=*/run=*.parquet"
LOGITS_GLOB = "logits/dataset=*/model=*/*.parquet"
OUTCOMES_GLOB = "outcomes/part-*.parquet"


#: Longest model folder name (``model=`` excluded), in characters of the percent-encoded id: file systems
#: limit a path component to 255 bytes (ext4, XFS, APFS, NTFS); 200 leaves room for ``model=``. Our choice.
MAX_MODEL_DIR_CHARS = 200
#: Hex digits of sha256(model id) that end a bounded folder name.
MODEL_HASH_CHARS = 16
#: Hex digits of the extraction cache key in a logits file's name.
KEY_CHARS = 16


def encode_model_id(model: str) -> str:
    """Path-safe form of a model id, at most ``MAX_MODEL_DIR_CHARS`` characters: its percent-encoding
    (``arch.tag`` stays readable, and reversible with :func:`decode_model_id`) when that fits; else the
    encoding of as many whole leading characters as fit, ``~`` and the first 16 hex digits of the
    id's sha256 (one folder per id; the full id is in the file's ``lead.model`` metadata). A 30-character
    CJK name encodes to 270 characters, over the 255-byte limit of a file name, and takes the second form."""
    encoded = quote(model, safe="")
    if len(encoded) <= MAX_MODEL_DIR_CHARS:
        return encoded
    suffix = "~" + hashlib.sha256(model.encode("utf-8")).hexdigest()[:MODEL_HASH_CHARS]
    prefix = ""
    for ch in model:
        piece = quote(ch, safe="")
        if len(prefix) + len(piece) + len(suffix) > MAX_MODEL_DIR_CHARS:
            break
        prefix += piece
    return prefix + suffix


def decode_model_id(encoded: str) -> str:
    """The model id of a folder name made by :func:`encode_model_id` (for a bounded name, its decoded
    prefix and hash; the full id is then in the file's ``lead.model`` metadata)."""
    return unquote(encoded)


@dataclass(frozen=True)
class Store:
    """The store folder ``root`` (absolute) and its layout (see the module docstring)."""

    root: Path

    @classmethod
    def of(cls, store: Store | str | Path) -> Store:
        """``store`` as a :class:`Store`: a Store as is, a path (``~`` expanded, made absolute) wrapped."""
        if isinstance(store, Store):
            return store
        return cls(Path(store).expanduser().resolve())

    # -- keys and paths --------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        """The absolute path of ``key`` (a path relative to the root; an absolute one is returned as is)."""
        return self.root / key

    def key(self, path: str | Path) -> str:
        """The key of ``path`` under the root (a relative posix path).

        Raises:
            ValueError: ``path`` is not under the root.
        """
        return PurePosixPath(Path(path).resolve().relative_to(self.root).as_posix()).as_posix()

    @property
    def datasets_dir(self) -> Path:
        """Where built-in and torchvision datasets are materialised."""
        return self.root / "datasets"

    def logits_key(self, dataset_fingerprint: str, model: str, cache_key: str) -> str:
        """``logits/dataset=<fp>/model=<id>/part-<first 16 hex digits of the key>.parquet``."""
        return f"logits/dataset={dataset_fingerprint}/model={encode_model_id(model)}/part-{cache_key[:KEY_CHARS]}.parquet"

    def logits_file(self, dataset_fingerprint: str, model: str, cache_key: str) -> Path:
        return self.path(self.logits_key(dataset_fingerprint, model, cache_key))

    def rankings_file(self, dataset_fingerprint: str, run_id: str) -> Path:
        return self.root / "rankings" / f"dataset={dataset_fingerprint}" / f"run={run_id}.parquet"

    def figure_file(self, dataset_fingerprint: str, run_id: str) -> Path:
        return self.root / "figures" / f"dataset={dataset_fingerprint}" / f"run={run_id}.png"

    def drawn_figure_file(self, key: str) -> Path:
        """``figures/drawn/<first 32 hex digits of the key>.png``: a selection's figure kept by what it shows
        (:func:`storage.figures.figure_key`), so that a ranking that shows the same draws nothing."""
        return self.root / "figures" / "drawn" / f"{key[:32]}.png"

    def history_figure_file(self, dataset: str) -> Path:
        """``figures/history-<dataset>.png``, the name reduced to letters, digits, ``.``, ``_`` and ``-``."""
        import re

        return self.root / "figures" / f"history-{re.sub(r'[^A-Za-z0-9._-]+', '-', dataset)[:80] or 'dataset'}.png"

    def cost_file(self, key: str) -> Path:
        """``costs/<first 32 hex digits of the key>.json`` (:func:`lead.cost.cost_key`)."""
        return self.root / "costs" / f"{key[:32]}.json"

    @property
    def registry_file(self) -> Path:
        return self.root / "registry" / "datasets.json"

    @property
    def outcomes_dir(self) -> Path:
        return self.root / "outcomes"

    @property
    def outcomes_lock(self) -> Path:
        return self.outcomes_dir / ".lock"

    def bench_dir(self, suite: str) -> Path:
        return self.root / "bench" / f"suite={suite}"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def tracking_uri(self) -> str:
        """The default MLflow tracking URI of this store (``lead.config.Settings`` uses the same)."""
        return f"sqlite:///{self.mlflow_db}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlflow-artifacts"

    def files(self, glob: str) -> list[Path]:
        """The finished files matching ``glob`` (one of the ``*_GLOB`` constants), sorted."""
        return sorted(self.root.glob(glob))

    def glob_path(self, glob: str) -> str:
        """``glob`` as an absolute posix pattern, for DuckDB's ``read_parquet``."""
        return (self.root / glob).as_posix()

    # -- the one atomic writer -------------------------------------------------------------------------
    def write(self, target: str | Path, write: Callable[[Path], object]) -> Path:
        """Write ``target`` (a key, or an absolute path) atomically: ``write(tmp)`` on a temporary
        ``.<name>.<hex>.tmp`` beside it, fsync, ``os.replace``, fsync the folder
        (:func:`storage.files.atomic_write`). Returns the absolute path."""
        return atomic_write(self.path(str(target)), write)
