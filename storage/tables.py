"""Arrow schemas of the store's tables, written the way their docstrings read them: ``"name type, ..."``."""

from __future__ import annotations

import pyarrow as pa

#: The column types the tables use.
TYPES = {
    "string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "float64": pa.float64(),
    "timestamp": pa.timestamp("us", tz="UTC"), "bool": pa.bool_(),
}


def table_schema(table: str, columns: str, version: str = "1") -> pa.Schema:
    """The schema of ``table`` from ``"name type, name type, ..."`` (types: :data:`TYPES`; ``timestamp`` is
    microseconds, UTC), with the metadata ``lead.schema_version`` and ``lead.table``."""
    fields = [tuple(col.split()) for col in columns.split(",")]
    return pa.schema([(name, TYPES[kind]) for name, kind in fields],
                     metadata={"lead.schema_version": version, "lead.table": table})
