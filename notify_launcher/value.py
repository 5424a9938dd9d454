"""`Value`: a record equal, hashed and shown by its fields, as a frozen dataclass is, without the
dataclasses module: with inspect, ast, dis and tokenize it costs the reader's start ~5 ms to
import, and each class it makes ~0.5-1 ms more, and the first event written as keepalived starts
the reader waits for that whole start."""

from __future__ import annotations


class Value:
    """A subclass names its fields in `__slots__` (in order) and sets each in its `__init__`."""

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Value)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self.__slots__)})"

    def as_dict(self) -> dict[str, object]:
        """The fields by name, nested Values (also in tuples) as dicts: dataclasses.asdict's shape."""
        return {name: _plain(getattr(self, name)) for name in self.__slots__}


def _plain(value: object) -> object:
    if isinstance(value, Value):
        return value.as_dict()
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    return value
