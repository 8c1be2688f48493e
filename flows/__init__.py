"""Prefect flows (rank a zoo, and later re-rank nightly, build a benchmark) and the ``lead`` CLI."""
