"""A CSV manifest with a header ``path,label``; relative paths are relative to the CSV's folder.

Claims a ``--dataset`` whose suffix is ``.csv`` (whether or not the file exists: a missing manifest is
reported by :func:`csv_manifest`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lead.data import MAX_NAMED, ImageDataset, Sample, _check_nonempty, check_name
from lead.errors import DatasetError


def parse(spec: str) -> str | None:
    """The manifest's path when ``spec`` ends in ``.csv`` (any case), else None."""
    path = Path(spec).expanduser()
    return str(path) if path.suffix.lower() == ".csv" else None


def load(ref: str, datasets_dir: Path, name: str | None) -> ImageDataset:
    """:func:`csv_manifest` of the file."""
    return csv_manifest(ref, name=name)


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
