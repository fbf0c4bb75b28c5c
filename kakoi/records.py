"""A base for small record classes, in place of dataclasses.

Importing dataclasses costs about 5 ms (it pulls in inspect), which `kakoi run` would pay
to read the image index and a fully cached `kakoi build` to parse its Dockerfile.
"""


class Record:
    """Mutable record with equality and a repr over `__slots__`."""

    __slots__ = ()

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    __hash__ = None

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"
