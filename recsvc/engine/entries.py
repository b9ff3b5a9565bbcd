"""Response items' own fields by item row, serialized once per process (``ServedModel.item_entries``
for the bundle's items, ``CatalogView.entries`` where live changes touch them)."""

from __future__ import annotations

from collections.abc import Callable


class ItemEntries(dict[int, tuple[bytes, str]]):
    """row -> (serialized own fields, item id), each built on its first look-up. A dict with
    ``__missing__``: the hot path's ``entries[row]`` is a plain dict subscription, no call. A race
    only builds an entry twice."""

    def __init__(self, build: Callable[[int], tuple[bytes, str]]) -> None:
        super().__init__()
        self._build = build

    def __missing__(self, row: int) -> tuple[bytes, str]:
        entry = self[row] = self._build(row)
        return entry
