"""Where bytes live: the Parquet logits store, the rankings table, MLflow tracking and DuckDB history.

The layout of a store folder is owned by one object, :class:`storage.store.Store` (its module docstring
lists every path); every file under it is written by the one atomic writer, ``Store.write``
(:func:`storage.files.atomic_write`: temporary file, fsync, rename).
"""
