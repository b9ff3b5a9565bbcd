"""The one place that maps member and item ids to matrix rows.

Ids are ASCII (the data contract limits their charset), stored as a sorted fixed-width bytes
array so a bundle can memory-map it and every server process shares the pages. Row ``i`` of a
factor matrix belongs to ``ids[i]``; lookups are binary searches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from recsvc.mapped import load_array

ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:@\-]+$")
ID_CHARSET_DOC = "letters, digits and _ . : @ -"


class IdMap:
    """Sorted unique ids <-> rows 0..n-1."""

    __slots__ = ("_ids",)

    def __init__(self, ids: np.ndarray) -> None:
        if ids.dtype.kind != "S":
            raise TypeError(f"IdMap needs a bytes array, got dtype {ids.dtype}")
        self._ids = ids

    @classmethod
    def from_values(cls, values: Iterable[str]) -> IdMap:
        arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values)
        if arr.size == 0:
            return cls(np.zeros(0, dtype="S1"))
        return cls(np.unique(arr.astype("S")))

    @classmethod
    def load(cls, path: Path, mmap: bool = True) -> IdMap:
        return cls(load_array(path, mmap=mmap))

    def save(self, path: Path) -> None:
        np.save(path, np.ascontiguousarray(self._ids))

    @property
    def array(self) -> np.ndarray:
        return self._ids

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self.row(item_id) is not None

    def row(self, item_id: str) -> int | None:
        try:
            key = item_id.encode("ascii")
        except UnicodeEncodeError:
            return None
        if len(key) > self._ids.dtype.itemsize or not key:
            return None
        i = int(np.searchsorted(self._ids, key))
        if i < len(self) and self._ids[i] == key:
            return i
        return None

    def rows(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Rows for many ids at once; -1 where an id is unknown."""
        keys = np.asarray(ids).astype("S")
        if len(self) == 0:
            return np.full(keys.shape[0], -1, dtype=np.int64)
        pos = np.searchsorted(self._ids, keys)
        pos_clipped = np.minimum(pos, len(self) - 1)
        found = self._ids[pos_clipped] == keys
        return np.where(found, pos_clipped, -1).astype(np.int64)

    def id(self, row: int) -> str:
        return bytes(self._ids[row]).decode("ascii")

    def ids(self, rows: Iterable[int]) -> list[str]:
        return [bytes(self._ids[r]).decode("ascii") for r in rows]
