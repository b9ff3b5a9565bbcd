"""Response items' own fields by item row, serialized once per process (``ServedModel.item_entries``
for the bundle's items, ``CatalogView.entries`` where live changes touch them)."""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence


class ItemEntries(Mapping[int, tuple[bytes, str]]):
    """row -> (serialized own fields, item id), each built on its first look-up. The entries sit
    in a plain dict that ``take`` reads with the dict's own C look-up: a ``dict`` subclass would
    not do, since CPython subscripts one through a Python-level slot call (several hundred
    instructions per item, the largest single cost of rendering). A race only builds an entry
    twice."""

    __slots__ = ("_build", "_got")

    def __init__(self, build: Callable[[int], tuple[bytes, str]]) -> None:
        self._got: dict[int, tuple[bytes, str]] = {}
        # ``build`` is its owner's method (a model's or a catalog view's); held weakly, so the
        # entries a catalog view shares with its model do not keep a swapped-out model alive
        self._build = weakref.WeakMethod(build) if inspect.ismethod(build) else lambda: build

    def take(self, rows: Sequence[int]) -> list[tuple[bytes, str]]:
        """The entries of ``rows``, in order (the render stage's one look-up per call)."""
        got = self._got
        try:
            return list(map(got.__getitem__, rows))  # no bytecode per row
        except KeyError:
            return [got[row] if row in got else self[row] for row in rows]

    def __getitem__(self, row: int) -> tuple[bytes, str]:
        entry = self._got.get(row)
        if entry is None:
            build = self._build()
            if build is None:
                raise RuntimeError("the owner of these item entries was unloaded")
            entry = self._got[row] = build(row)
        return entry

    def __iter__(self) -> Iterator[int]:
        return iter(self._got)

    def __len__(self) -> int:
        return len(self._got)
