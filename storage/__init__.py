"""Where bytes live: the Parquet logits store, the rankings table, MLflow tracking and DuckDB history.

Layout of a store folder::

    <store>/datasets/<name>/...                                    materialised demo datasets
    <store>/logits/dataset=<fingerprint>/model=<id>/part-<key>.parquet  one per dataset x model x preprocessing
    <store>/rankings/dataset=<fingerprint>/run=<run id>.parquet    one per selection
    <store>/mlflow.db, <store>/mlflow-artifacts/                    MLflow tracking (default)
"""
