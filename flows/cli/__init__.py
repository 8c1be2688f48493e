"""The ``lead`` command: the front door over the flows and the store, one module per command group.

- :mod:`flows.cli.common`: the Typer app, the shared options and the one mapping from errors to exit
  statuses (errors in the input print one line and exit with status 2; ``--debug`` shows the traceback).
- :mod:`flows.cli.interrupts`: Ctrl-C and SIGTERM during a ranking.
- :mod:`flows.cli.rank` (``lead rank``), :mod:`flows.cli.history` (``lead history``), :mod:`flows.cli.bench`
  (``lead bench``, ``bench build``), :mod:`flows.cli.outcomes` (``lead outcomes``),
  :mod:`flows.cli.operations` (``lead datasets``, ``watch``, ``serve``, ``setup``, ``ui``).
"""

from __future__ import annotations

# Importing a module registers its commands; `lead --help` lists them in this order.
from flows.cli import rank  # noqa: F401, I001
from flows.cli import history  # noqa: F401
from flows.cli import bench  # noqa: F401
from flows.cli import outcomes  # noqa: F401
from flows.cli import operations  # noqa: F401
from flows.cli.common import app
from flows.cli.rank import _print_selection

__all__ = ["app", "_print_selection"]
