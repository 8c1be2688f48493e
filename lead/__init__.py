"""lead: rank a zoo of pre-trained image models for a labelled dataset without fine-tuning them.

The pure layer: scores (``lead.scoring``), rank statistics, model and dataset specs, the forward pass.
It never imports the orchestration (Prefect, MLflow, DuckDB); those live in ``tasks/``, ``flows/`` and
``storage/``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lead-select")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
