"""Prefect tasks: thin wrappers over ``lead`` and ``storage`` that add retries, caching, tags and logging."""
