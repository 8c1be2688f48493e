"""The logits store: one Parquet file per (dataset, model, weights and preprocessing), written atomically.

Arrow schema (version 1)::

    sample_id: string
    label:     int32                          index into the dataset's sorted class names
    features:  fixed_size_list<float32>[D]    pre-logit features
    logits:    fixed_size_list<float32>[Cs]   source-head logits (absent for headless models)

(float16 instead of float32 for the stored features of a benchmark suite; read back as float32.)

Schema metadata (all strings): ``lead.schema_version``, ``lead.model``, ``lead.arch``,
``lead.weights``, ``lead.weights_digest``, ``lead.dataset``, ``lead.dataset_fingerprint``,
``lead.preprocessing`` (JSON), ``lead.classes`` (JSON), ``lead.cache_key``, ``lead.d``, ``lead.cs``,
``lead.created_at`` (ISO 8601 UTC), ``lead.version`` (package version), where the extraction ran
(``lead.worker`` ``host:pid``, ``lead.device``, ``lead.extract_start``; ISO 8601 UTC); and, in the file
footer, written on close: ``lead.n`` (rows), ``lead.skipped`` (JSON list of [sample id, error] for the
images that could not be decoded) and ``lead.extract_end``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lead import __version__
from lead.errors import InputError, error_text
from storage.files import publish
from storage.store import KEY_CHARS, MAX_MODEL_DIR_CHARS, MODEL_HASH_CHARS, Store, decode_model_id, encode_model_id  # noqa: F401

SCHEMA_VERSION = "1"
#: Rows per Parquet row group (bounded memory when writing and reading in pieces).
ROW_GROUP_SIZE = 4096


def logits_path(store: Path, dataset_fingerprint: str, model: str, cache_key: str) -> Path:
    """``<store>/logits/dataset=<fp>/model=<id>/part-<key>.parquet``: one file per dataset x model x
    (weights, preprocessing), so two zoos that give one model name different weights or input sizes
    keep a file each instead of evicting each other's (:meth:`storage.store.Store.logits_key`)."""
    return Store.of(store).logits_file(dataset_fingerprint, model, cache_key)


def make_schema(d: int, cs: int | None, metadata: dict[str, str], value_type: pa.DataType = pa.float32()) -> pa.Schema:
    fields = [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("features", pa.list_(value_type, d), nullable=False),
    ]
    if cs:
        fields.append(pa.field("logits", pa.list_(value_type, cs), nullable=False))
    return pa.schema(fields, metadata={k: str(v) for k, v in metadata.items()})


def _fixed_list(x: np.ndarray, dtype=np.float32) -> pa.FixedSizeListArray:
    x = np.ascontiguousarray(x, dtype=dtype)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


#: A temporary file untouched for this long belongs to a run that was killed (a live writer appends
#: a row group every few seconds); it is removed before the same file is written again.
STALE_TMP_S = 3600


def remove_stale_temporaries(path: Path, older_than_s: float = STALE_TMP_S) -> list[Path]:
    """Delete ``.<name>.*.tmp`` files beside ``path`` not modified for ``older_than_s`` seconds.
    Returns the removed paths."""
    removed = []
    now = time.time()
    for tmp in Path(path).parent.glob(f".{Path(path).name}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


class LogitsWriter:
    """Stream batches into ``path`` through a temporary file in the same folder; ``close()`` renames it
    into place (``os.replace``), so readers never see a partial file. Use as a context manager: on an
    exception the temporary file is removed and nothing is published.

    The schema is fixed by the first non-empty batch (D and Cs); ``metadata`` is completed with D, Cs,
    schema version, creation time and package version, and on close with N and the skipped images.

    With ``background=True`` batches are encoded and written by one writer thread, at most
    ``MAX_PENDING`` behind, so writing does not stall the forward pass; order is kept, and a write error
    surfaces at the next ``write`` or at ``close``.
    """

    #: Batches the background writer may lag behind (bounds memory).
    MAX_PENDING = 2

    def __init__(self, path: Path, metadata: dict[str, str], *, background: bool = False, dtype=np.float32):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float16):
            raise InputError(f"logits store: dtype must be float32 or float16; got {self.dtype}.")
        self.metadata = dict(metadata)
        #: Extra ``lead.*`` keys for the footer, known only at the end (set before ``close``).
        self.footer: dict[str, str] = {}
        self.skipped: list[tuple[str, str]] = []
        self.tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        self._writer: pq.ParquetWriter | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lead-parquet") if background else None
        self._pending: deque[Future] = deque()
        self.n = 0
        #: Metadata known only at the end (e.g. the measured throughput), written on close.
        self.close_metadata: dict[str, str] = {}

    def __enter__(self) -> LogitsWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)
        return self

    def skip(self, skipped: list[tuple[str, str]]) -> None:
        """Record images that could not be decoded: (sample id, error) pairs."""
        self.skipped.extend(skipped)

    def write(self, sample_ids, labels: np.ndarray, features: np.ndarray, logits: np.ndarray | None) -> None:
        """Append one batch: ``features`` (B, D), ``logits`` (B, Cs) or None, ``labels`` (B,). Empty batches are ignored."""
        if len(sample_ids) == 0:
            return
        self.n += len(sample_ids)
        if self._pool is None:
            self._write(list(sample_ids), labels, features, logits)
            return
        while len(self._pending) >= self.MAX_PENDING:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write, list(sample_ids), labels, features, logits))

    def _drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def _write(self, sample_ids, labels, features, logits) -> None:
        if self._writer is None:
            self.d = int(features.shape[1])
            self.cs = int(logits.shape[1]) if logits is not None else 0
            meta = {
                **self.metadata,
                "lead.schema_version": SCHEMA_VERSION,
                "lead.d": str(self.d),
                "lead.cs": str(self.cs),
                "lead.created_at": datetime.now(UTC).isoformat(),
                "lead.version": __version__,
            }
            self.schema = make_schema(self.d, self.cs, meta, pa.from_numpy_dtype(self.dtype))
            # no dictionary encoding: features, logits and sample ids are all distinct; trying it made
            # writing 10x slower (0.69 s against 0.075 s for 2,048 rows of 1,280 + 1,000 floats)
            # a CRC32 per page (Parquet page checksums): damage to a stored file is detected on reading it
            # back, where zstd alone missed damage that happened to decode (values changed silently)
            self._writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd", use_dictionary=False,
                                            write_page_checksum=True)
        cols = [pa.array(list(sample_ids), pa.string()), pa.array(np.asarray(labels, dtype=np.int32)), _fixed_list(features, self.dtype)]
        if self.cs:
            cols.append(_fixed_list(logits, self.dtype))
        self._writer.write_batch(pa.RecordBatch.from_arrays(cols, schema=self.schema), row_group_size=ROW_GROUP_SIZE)

    def close(self) -> Path:
        try:
            self._drain()
        except BaseException:
            self.abort()
            raise
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._writer is None:
            raise InputError(
                f"logits store: a file must have at least one readable image; got none for {self.path} "
                f"({len(self.skipped)} skipped)."
            )
        self._writer.add_key_value_metadata({**self.footer, "lead.n": str(self.n), "lead.skipped": json.dumps(self.skipped),
                                             "lead.page_checksums": "crc32", **self.close_metadata})
        self._writer.close()
        return publish(self.tmp, self.path)

    def abort(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:
                pass
        self.tmp.unlink(missing_ok=True)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass(frozen=True)
class LogitsFile:
    """A logits file read back: ``features`` (N, D) float32, ``logits`` (N, Cs) float32 or None (float16
    files are widened to float32),
    ``labels`` (N,) int32, ``sample_ids`` N strings, ``metadata`` the ``lead.*`` keys."""

    sample_ids: list[str]
    labels: np.ndarray
    features: np.ndarray
    logits: np.ndarray | None
    metadata: dict[str, str]

    @property
    def classes(self) -> list[str]:
        return json.loads(self.metadata["lead.classes"])

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [tuple(x) for x in json.loads(self.metadata.get("lead.skipped", "[]"))]


def read_metadata(path: Path) -> dict[str, str]:
    """The ``lead.*`` metadata of a logits file, schema and footer keys together (reads only the footer)."""
    raw = pq.read_metadata(path).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items() if k.startswith(b"lead.")}


class DamagedLogitsError(OSError):
    """A logits file whose bytes no longer read back as written (checksum or decoding failure, rows missing)."""


def _read_verified(path: Path) -> tuple[pa.Table, dict[str, str]]:
    try:
        meta = read_metadata(path)
        table = pq.read_table(path, page_checksum_verification=True)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as err:
        raise DamagedLogitsError(f"logits file {path} must read back as written; got {error_text(err)}") from err
    if "lead.n" in meta and table.num_rows != int(meta["lead.n"]):
        raise DamagedLogitsError(f"logits file {path} must read back as written; got {table.num_rows} rows for "
                                 f"{meta['lead.n']} written")
    return table, meta


def read_logits(path: Path) -> LogitsFile:
    """Read a whole logits file into numpy arrays (zero-copy from Arrow where possible), verifying each
    page's checksum.

    Raises:
        DamagedLogitsError: the file is damaged (a page checksum or decoding fails, rows are missing); the
            message names the file.
    """
    table, meta = _read_verified(Path(path))

    def matrix(name):
        col = table.column(name).combine_chunks()
        width = col.type.list_size
        values = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        return values.astype(np.float32) if values.dtype != np.float32 else values

    return LogitsFile(
        sample_ids=table.column("sample_id").to_pylist(),
        labels=table.column("label").to_numpy(),
        features=matrix("features"),
        logits=matrix("logits") if "logits" in table.column_names else None,
        metadata=meta,
    )


def is_complete(path: Path, cache_key: str) -> bool:
    """True when ``path`` is a finished logits file written for ``cache_key`` (a readable footer)."""
    try:
        return read_metadata(path).get("lead.cache_key") == cache_key
    except (OSError, pa.ArrowInvalid):
        return False


#: Suffix added to a damaged logits file when it is set aside (no reader matches ``*.parquet.corrupt``).
CORRUPT_SUFFIX = ".corrupt"


def check_cached(path: Path, cache_key: str) -> tuple[bool, str]:
    """Whether ``path`` is a usable cached logits file for ``cache_key``, reading it whole: ``(True, "")``
    for a finished, intact file; ``(False, "")`` when there is none (or one for another key); and
    ``(False, warning)`` for a damaged file (unreadable footer, a page checksum or decoding failure, rows
    missing), which is renamed to ``<name>.corrupt`` beside it so that it is extracted again. The warning
    names the file, the cause and where it went. Files written before page checksums (no
    ``lead.page_checksums`` key) are checked by decoding only."""
    path = Path(path)
    if not path.exists():
        return False, ""
    try:
        if read_metadata(path).get("lead.cache_key") != cache_key:
            return False, ""
        _read_verified(path)
        return True, ""
    except FileNotFoundError:
        return False, ""
    except (OSError, pa.ArrowException) as err:
        cause = str(err) if isinstance(err, DamagedLogitsError) else f"logits file {path} must read back as written; got {error_text(err)}"
        aside = path.with_name(path.name + CORRUPT_SUFFIX)
        try:
            os.replace(path, aside)
        except FileNotFoundError:  # another process set it aside first
            pass
        return False, f"{cause}. Set aside as {aside.name}; extracting again."
