"""Where bytes live: the Parquet logits store, the rankings table, MLflow tracking and DuckDB history.

Layout of a store folder::

    <store>/datasets/<name>/...                                    materialised demo datasets
    <store>/logits/dataset=<fingerprint>/model=<id>/part-<key>.parquet  one per dataset x model x preprocessing
    <store>/rankings/dataset=<fingerprint>/run=<run id>.parquet    one per selection
    <store>/outcomes/part-<time>-<id>.parquet                       real fine-tuned accuracies, one per add/import
    <store>/mlflow.db, <store>/mlflow-artifacts/                    MLflow tracking (default)
"""
