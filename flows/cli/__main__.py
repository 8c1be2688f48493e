"""``python -m flows.cli``: the ``lead`` command."""

from flows.cli import app

app()
