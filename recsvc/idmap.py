"""The one place that maps member and item ids to matrix rows, and the one rule for what an id is.

Ids are Unicode text (a SKU such as ``母婴/奶粉-900g#2``, a member such as ``会员:13800001111``),
normalised to NFC at every entry (files and API) so the same id typed twice is the same id. They
are stored as UTF-8 in a sorted fixed-width bytes array so a bundle can memory-map it and every
server process shares the pages; UTF-8 byte order is code-point order, so sorting and the binary
search work on the bytes. Row ``i`` of a factor matrix belongs to ``ids[i]``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from recsvc.errors import InvalidArgument
from recsvc.mapped import load_array

# The separators an id may hold besides letters, marks and digits of any script. Deliberately
# absent: whitespace, control and format characters (invisible; a bidi override makes two ids
# look alike), '{' and '}' (the Redis hash tag {m:<id>} must end where the id ends: recsvc.redis_keys),
# '|' (the separator of outreach send records and of featured_item_ids), '*?[]\' (Redis SCAN
# MATCH globs), ',' and '"' (CSV) and every other symbol.
ID_SEPARATORS = "/-_.:@#"
# The common case in one regex: \w is every character str.isalnum() accepts (letters and digits
# of any script) plus '_'. A non-ASCII id it refuses gets the full rule (combining marks, which
# scripts such as Devanagari or Thai need inside words, are letters' parts but not \w).
ID_PATTERN = re.compile(r"^[\w/\-.:@#]+\Z")  # \Z: "$" also matches before a final "\n"
ID_CHARSET_DOC = "letters and digits of any script and / - _ . : @ #"
# What ``id_problem`` returns.
EMPTY, TOO_LONG, BAD_CHARS = "empty", "too_long", "bad_chars"


def normalize_id(value: str) -> str:
    """The NFC form of ``value`` (ASCII is already NFC: no work for the common case)."""
    return value if value.isascii() else unicodedata.normalize("NFC", value)


def id_chars_ok(value: str) -> bool:
    """True when every character of a non-empty ``value`` is allowed in an id."""
    if ID_PATTERN.match(value):
        return True
    if not value or value.isascii():
        return False
    return all(c in ID_SEPARATORS or unicodedata.category(c)[0] in "LMN" for c in value)


def id_problem(value: str, max_bytes: int) -> str | None:
    """None for a valid (already normalised) id, else EMPTY, TOO_LONG or BAD_CHARS. The length
    limit counts UTF-8 bytes: that is what the bundle's id arrays and Redis keys hold."""
    if not value:
        return EMPTY
    if value.isascii():  # the common case, decided without a further call
        if len(value) > max_bytes:
            return TOO_LONG
        return None if ID_PATTERN.match(value) else BAD_CHARS
    if len(value.encode("utf-8")) > max_bytes:
        return TOO_LONG
    return None if id_chars_ok(value) else BAD_CHARS


def encode_ids(values: Iterable[str] | np.ndarray) -> np.ndarray:
    """Ids as a fixed-width UTF-8 bytes array (numpy's ``astype("S")`` only takes ASCII)."""
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values)
    if arr.dtype.kind == "S":
        return arr
    if arr.size == 0:
        return np.zeros(arr.shape, dtype="S1")
    return np.char.encode(arr.astype(str), "utf-8")


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
        return cls(np.unique(encode_ids(arr)))

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
        ids = self._ids
        key = item_id.encode("utf-8")
        if len(key) > ids.dtype.itemsize or not key:
            return None
        # the array's own method, not np.searchsorted: no Python-level wrapper (once per call)
        i = int(ids.searchsorted(key))
        if i < ids.shape[0] and ids[i] == key:
            return i
        return None

    def rows(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Rows for many ids at once; -1 where an id is unknown."""
        keys = encode_ids(ids)
        if len(self) == 0:
            return np.full(keys.shape[0], -1, dtype=np.int64)
        pos = np.searchsorted(self._ids, keys)
        pos_clipped = np.minimum(pos, len(self) - 1)
        found = self._ids[pos_clipped] == keys
        return np.where(found, pos_clipped, -1).astype(np.int64)

    def id(self, row: int) -> str:
        return bytes(self._ids[row]).decode("utf-8")

    def ids(self, rows: Iterable[int]) -> list[str]:
        return [bytes(self._ids[r]).decode("utf-8") for r in rows]


def check_id(value: str, field: str, max_length: int, *, required: bool = True) -> str:
    """``value`` in NFC, or InvalidArgument naming ``field`` and why (MISSING_ID, ID_TOO_LONG,
    INVALID_ID): the id rule for the Outreach and Admin APIs."""
    value = normalize_id(value)
    problem = id_problem(value, max_length)
    if problem == EMPTY:
        if required:
            raise InvalidArgument(f"{field} is required", reason="MISSING_ID")
        return value
    if problem == TOO_LONG:
        raise InvalidArgument(f"{field} is longer than {max_length} bytes in UTF-8", reason="ID_TOO_LONG")
    if problem is not None:
        raise InvalidArgument(f"{field} may contain only {ID_CHARSET_DOC}", reason="INVALID_ID")
    return value
