"""The registry behind each extension point of ``lead`` (weight sources, dataset sources): named entries
kept in registration order, which is also the order messages and ``--help`` list them in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def one_of(forms: list[str]) -> str:
    """``"a, b or c"`` (``"a"`` for one form)."""
    return forms[0] if len(forms) == 1 else f"{', '.join(forms[:-1])} or {forms[-1]}"


class Registry(Generic[T]):
    """Entries of one kind, by name, in registration order.

    Args:
        what: what an entry is, for error messages (``"weight scheme"``).
        name_of: an entry's unique name (``lambda s: s.scheme``).
        check: validates a new entry's name; raises ValueError (optional).
    """

    def __init__(self, what: str, name_of: Callable[[T], str], check: Callable[[str], None] | None = None):
        self.what, self._name_of, self._check = what, name_of, check
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        """Add ``entry`` after the others. Returns it.

        Raises:
            ValueError: its name is already registered (or ``check`` refuses it).
        """
        name = self._name_of(entry)
        if self._check is not None:
            self._check(name)
        if name in self._entries:
            raise ValueError(f"register: {self.what} must be unique; {name!r} is already registered.")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (for tests that register a throwaway one); unknown names are ignored."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> T | None:
        return self._entries.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._entries.values()))
