"""Weight sources: where a zoo entry's weights come from, one module per scheme, one registry.

A zoo entry's ``weights`` is ``<scheme>:<value>``. Each scheme is a :class:`WeightSource` with three
functions:

- ``parse(value, base) -> value``: check the value when the zoo file is read and normalise it (``file:``
  resolves its path against the zoo file's folder ``base``); raises :class:`~lead.errors.InputError`.
- ``digest(spec) -> str``: the weights' identity, a 64-hex sha256 that enters the extraction cache key
  (the checkpoint's bytes when they are local, the tag and library version when they are remote); raises
  :class:`~lead.errors.ModelLoadError` when the weights cannot be found.
- ``load(spec) -> torch.nn.Module``: the model with its weights, in eval mode on the CPU, offering timm's
  ``forward_features``/``forward_head``; never random weights; raises :class:`~lead.errors.ModelLoadError`.

The built-in schemes, in the order the messages list them: ``timm:`` (:mod:`lead.weights.timm`),
``file:`` (:mod:`lead.weights.file`), ``pypi:`` (:mod:`lead.weights.pypi`) and ``torchvision:``
(:mod:`lead.weights.torchvision`). Adding one is a module with those three functions and one
:func:`register` call at the bottom of this file (docs/architecture.md, "Adding a source").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lead.errors import InputError
from lead.registry import Registry, one_of

if TYPE_CHECKING:
    from lead.zoo import ModelSpec


@dataclass(frozen=True)
class WeightSource:
    """One registered weight scheme.

    Attributes:
        scheme: the prefix before the colon in a zoo entry's ``weights`` (lowercase, no colon).
        usage: how a user writes it, e.g. ``"pypi:<package>"``; listed by ``--help`` and by the error for
            an unknown scheme.
        parse: ``(value, base) -> value``: the checked, normalised value (``base``: the zoo file's folder).
        digest: ``(spec) -> str``: 64-hex sha256 identity of the weights, part of the extraction cache key.
        load: ``(spec) -> torch.nn.Module``: the model in eval mode on the CPU.
        description: one line for the docs.
    """

    scheme: str
    usage: str
    parse: Callable[[str, Path], str]
    digest: Callable[[ModelSpec], str]
    load: Callable[[ModelSpec], Any]
    description: str = ""


def _check_scheme(scheme: str) -> None:
    if not scheme or ":" in scheme or scheme != scheme.lower():
        raise ValueError(f"register: scheme must be a lowercase word without ':'; got {scheme!r}.")


_REGISTRY: Registry[WeightSource] = Registry("weight scheme", lambda s: s.scheme, _check_scheme)


#: ``register(source) -> source``: add a weight source after the others; ValueError when its scheme is
#: taken, holds a colon or upper case.
register = _REGISTRY.register
#: ``unregister(scheme)``: remove a scheme (for tests that register a throwaway source); unknown ones are ignored.
unregister = _REGISTRY.unregister
#: ``schemes() -> list[str]``: the registered schemes, in registration order.
schemes = _REGISTRY.names


def usages() -> str:
    """The registered forms as one phrase: ``timm:<tag>, file:<path>, pypi:<package> or torchvision:<weights>``
    (for ``--help`` texts and error messages)."""
    return one_of([s.usage for s in _REGISTRY])


def get_source(scheme: str) -> WeightSource:
    """The weight source of ``scheme``.

    Raises:
        InputError: unknown scheme (the message lists the registered forms).
    """
    source = _REGISTRY.get(scheme)
    if source is None:
        raise InputError(f"weights must be {usages()}; got scheme {scheme!r}.")
    return source


def split(weights: str) -> tuple[str, str]:
    """``"scheme:value"`` -> ``(scheme, value)``; a value may itself contain colons."""
    scheme, _, value = weights.partition(":")
    return scheme, value


def parse_weights(weights: str, base: Path, where: str) -> str:
    """Check and normalise a zoo entry's ``weights`` through its scheme's ``parse``.

    Args:
        weights: ``<scheme>:<value>`` as written in the zoo file.
        base: the zoo file's folder (``file:`` paths are relative to it).
        where: the start of an error message, e.g. ``"zoo z.yaml: model 'a'"``.
    Returns:
        ``<scheme>:<normalised value>``.
    Raises:
        InputError: an unknown scheme or an empty value (listing the registered forms), or what the
            scheme's ``parse`` refuses.
    """
    scheme, value = split(weights)
    if scheme not in _REGISTRY or not value:
        raise InputError(f"{where} weights must be {usages()}; got {weights!r}.")
    return f"{scheme}:{_REGISTRY.get(scheme).parse(value, base)}"


def weights_digest(spec: ModelSpec) -> str:
    """The weights' identity for the extraction cache key (the scheme's ``digest``).

    Raises:
        InputError: an unknown scheme. ModelLoadError: the weights cannot be found.
    """
    return get_source(spec.scheme).digest(spec)


def load_model(spec: ModelSpec):
    """The model of ``spec`` with its weights, a ``torch.nn.Module`` in eval mode on the CPU (the scheme's
    ``load``). Never falls back to random weights.

    Raises:
        InputError: an unknown scheme. ModelLoadError: unknown architecture, weights missing, offline or
            corrupt, or a checkpoint that does not fit the architecture.
    """
    return get_source(spec.scheme).load(spec)


# --- the built-in sources, one module each; a new source is one module and one line here -------------

from lead.weights import file as _file, pypi as _pypi, timm as _timm, torchvision as _torchvision  # noqa: E402

register(WeightSource("timm", "timm:<tag>", _timm.parse, _timm.digest, _timm.load, _timm.__doc__.split("\n")[0]))
register(WeightSource("file", "file:<path>", _file.parse, _file.digest, _file.load, _file.__doc__.split("\n")[0]))
register(WeightSource("pypi", "pypi:<package>", _pypi.parse, _pypi.digest, _pypi.load, _pypi.__doc__.split("\n")[0]))
register(WeightSource("torchvision", "torchvision:<weights>", _torchvision.parse, _torchvision.digest,
                      _torchvision.load, _torchvision.__doc__.split("\n")[0]))
