"""Exception types of the project.

Each subclasses a builtin so that callers who do not know our types still catch them:
an input problem is a ``ValueError``, a model that cannot be built or loaded a ``RuntimeError``.
Messages follow one pattern: ``<where>: <what> must be <expectation>; got <actual>. <how to fix>.``
"""

from __future__ import annotations


class InputError(ValueError):
    """Invalid user input: arrays, labels, dataset folders, zoo files, names."""


class DatasetError(InputError):
    """A dataset that cannot be read or does not meet the requirements of a ranking."""


class ModelLoadError(RuntimeError):
    """A model of the zoo that cannot be built, or whose weights cannot be found or loaded."""


class ScoreError(RuntimeError):
    """A transferability score that cannot be computed for one model (reported, not fatal)."""
