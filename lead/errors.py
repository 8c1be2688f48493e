"""Exception types of the project.

Each subclasses a builtin so that callers who do not know our types still catch them:
an input problem is a ``ValueError``, a model that cannot be built or loaded a ``RuntimeError``.
Messages follow one pattern: ``<where>: <what> must be <expectation>; got <actual>. <how to fix>.``
"""

from __future__ import annotations

import re


class InputError(ValueError):
    """Invalid user input: arrays, labels, dataset folders, zoo files, names."""


class DatasetError(InputError):
    """A dataset that cannot be read or does not meet the requirements of a ranking."""


class ModelLoadError(RuntimeError):
    """A model of the zoo that cannot be built, or whose weights cannot be found or loaded."""


class ScoreError(RuntimeError):
    """A transferability score that cannot be computed for one model (reported, not fatal)."""


#: ANSI terminal escape sequences (CSI such as ``\x1b[1m``, and OSC); torch puts bold text in its messages.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape codes (``\\x1b[1m...\\x1b[0m`` and the like)."""
    return _ANSI.sub("", text)


def error_text(err: BaseException) -> str:
    """The one form in which an error is stored (rankings table, MLflow tags, results, skipped-image
    lists): ``"<Type>: <message>"`` with terminal escape codes removed."""
    return f"{type(err).__name__}: {strip_ansi(str(err))}"
