"""Keyed pseudonyms of member ids and the erasure list.

Reads/writes: ``settings.security.erasure_list`` (default ``var/privacy/erasures.txt``), one erased
member id per line, appended under an exclusive ``flock``. The list keeps the raw id because every
later import and training run must recognise the member to leave them out (docs/privacy.md).

``Pseudonymizer`` turns a member id into ``p_<32 hex>`` with HMAC-SHA256 under
``settings.security.pseudonym_key``: stable for one key (joins across logs and metrics still
work), not reversible or guessable without the key. Use it wherever a member is named in logs,
metric labels, audit entries and MLflow artifacts. ``pseudonyms()`` also gives the member's
pseudonyms under ``settings.security.previous_pseudonym_keys``: what erasure matches, so records
written before a key rotation are found too.

``apply_erasures(dataset, erased_ids)`` is the one call the training pipeline makes before fitting.
"""

from __future__ import annotations

import fcntl
import hmac
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from recsvc.errors import ConfigError, InvalidArgument

DEV_PSEUDONYM_KEY = "dev-only-change-me"
MEMBER_COLUMN = "member_id"

T = TypeVar("T")


def _checked_key(name: str, key: str) -> bytes:
    if len(key) < 16:
        raise ConfigError(f"{name} must be at least 16 characters")
    return key.encode("utf-8")


class Pseudonymizer:
    """Names members under ``key``; ``previous_keys`` are only matched, never written."""

    def __init__(self, key: str, previous_keys: Sequence[str] = ()) -> None:
        self._key = _checked_key("security.pseudonym_key", key)
        self._previous = tuple(
            _checked_key(f"security.previous_pseudonym_keys[{i}]", old) for i, old in enumerate(previous_keys)
        )

    @property
    def has_previous_keys(self) -> bool:
        return bool(self._previous)

    @property
    def is_dev_key(self) -> bool:
        return hmac.compare_digest(self._key, DEV_PSEUDONYM_KEY.encode())

    def __call__(self, member_id: str) -> str:
        return self.pseudonym(member_id)

    def pseudonym(self, member_id: str) -> str:
        return _pseudonym(self._key, member_id)

    def pseudonyms(self, member_id: str) -> tuple[str, ...]:
        """The member's pseudonym under the current key, then under each previous key (without
        repeats): a record written before a rotation names the member by one of the latter."""
        found = [_pseudonym(key, member_id) for key in (self._key, *self._previous)]
        return tuple(dict.fromkeys(found))


def _pseudonym(key: bytes, member_id: str) -> str:
    # hmac.digest: OpenSSL's one-shot HMAC, without building an HMAC object per member
    return "p_" + hmac.digest(key, member_id.encode("utf-8"), "sha256")[:16].hex()


class ErasureList:
    """Append-only list of erased member ids; ``read()`` returns them as a set."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def check_appendable(self) -> None:
        """Raise ``OSError`` unless :meth:`add` can write here: the folder exists or can be
        created, a file can be created in it and the list, when it exists, opens for reading and
        appending (as ``add`` opens it). Tries it rather than asking ``os.access``, which says yes
        to root for a folder under ``/proc`` or on a read-only mount. Writes nothing to the list."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            with open(self.path, "a+", encoding="utf-8"):
                pass
            return
        probe = self.path.with_name(f".{self.path.name}.{os.getpid()}.probe")
        probe.touch()
        probe.unlink()

    def add(self, member_id: str) -> bool:
        """Append ``member_id`` unless already listed; return True when it was added."""
        if not member_id or any(c in member_id for c in "\r\n"):
            raise InvalidArgument("member_id must be non-empty and on one line", reason="INVALID_ID")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                fh.seek(0)
                data = fh.read()
                if _normalized(member_id) in self._parse(data):
                    return False
                # a list last saved by an editor may lack its final newline: never glue the new
                # id onto the last one
                sep = b"\n" if data and not data.endswith(b"\n") else b""
                fh.seek(0, os.SEEK_END)
                fh.write(sep + member_id.encode("utf-8") + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
                return True
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def read(self) -> frozenset[str]:
        """The listed ids, as the id rule spells them (``recsvc.idmap.normalize_id``: NFC).

        Accepts what an editor may have saved: a UTF-8 byte-order mark, CRLF line ends, spaces
        around an id and blank lines. Bytes that are not UTF-8 raise :class:`ConfigError` naming
        the file and line: guessing would leave the member on that line in the model."""
        try:
            with open(self.path, "rb") as fh:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
                try:
                    data = fh.read()
                finally:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        except FileNotFoundError:
            return frozenset()
        return self._parse(data)

    def _parse(self, data: bytes) -> frozenset[str]:
        from recsvc.idmap import normalize_id  # the id rule the model's id map was built with

        ids: set[str] = set()
        for lineno, raw in enumerate(data.split(b"\n"), start=1):
            try:
                # utf-8-sig drops a byte-order mark (only the first line can carry one)
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(
                    f"erasure list {self.path} line {lineno}: not UTF-8 (byte {exc.object[exc.start]:#04x} "
                    f"at column {exc.start + 1}); save it as UTF-8",
                    reason="INVALID_ERASURE_LIST",
                ) from None
            # strip() also drops the CR of a CRLF line end and any stray spaces or tabs
            if member_id := text.strip():
                ids.add(normalize_id(member_id))
        return frozenset(ids)

    def __contains__(self, member_id: object) -> bool:
        return member_id in self.read()


def _normalized(member_id: str) -> str:
    from recsvc.idmap import normalize_id

    return normalize_id(member_id.strip())


def _drop_members(frame: Any, erased: frozenset[str]) -> Any:
    # isin works on categorical ids directly; casting 50M ids to strings first would cost GBs
    mask = frame[MEMBER_COLUMN].isin(list(erased))
    return frame.loc[~mask].reset_index(drop=True) if bool(mask.any()) else frame


def apply_erasures(dataset: T, erased_ids: Iterable[str]) -> T:
    """Remove every row of an erased member from ``dataset`` before anything is fitted.

    ``dataset`` is a pandas DataFrame, a mapping of name -> DataFrame, or a dataclass or other
    object whose DataFrame attributes are filtered (e.g. ``pipelines.ingest.Dataset``). Any frame
    with a ``member_id`` column loses the erased members' rows (members, events, quarantine alike);
    frames without the column (the catalog) are returned unchanged. Returns a new object of the
    same shape; the input is not modified.
    """
    import dataclasses

    import pandas as pd

    known = isinstance(dataset, pd.DataFrame | Mapping) or (
        not isinstance(dataset, type) and (dataclasses.is_dataclass(dataset) or _frame_attrs(dataset))
    )
    if not known:
        # Silently passing an unknown shape through would train on erased members.
        raise TypeError(f"apply_erasures cannot filter a {type(dataset).__name__}")
    return _apply(dataset, frozenset(erased_ids))


def _apply(dataset: T, erased: frozenset[str]) -> T:
    import dataclasses

    import pandas as pd

    if not erased:
        return dataset
    if isinstance(dataset, pd.DataFrame):
        return _drop_members(dataset, erased) if MEMBER_COLUMN in dataset.columns else dataset  # type: ignore[return-value]
    if isinstance(dataset, Mapping):
        return type(dataset)({k: _apply(v, erased) for k, v in dataset.items()})  # type: ignore[call-arg]
    if dataclasses.is_dataclass(dataset) and not isinstance(dataset, type):
        changes = {
            f.name: _apply(getattr(dataset, f.name), erased)
            for f in dataclasses.fields(dataset)
            if isinstance(getattr(dataset, f.name), pd.DataFrame | Mapping)
        }
        return dataclasses.replace(dataset, **changes)  # type: ignore[type-var]
    names = _frame_attrs(dataset)
    if names:
        import copy

        out = copy.copy(dataset)
        for name in names:
            setattr(out, name, _apply(getattr(dataset, name), erased))
        return out
    return dataset


def _frame_attrs(obj: Any) -> list[str]:
    """Names of an object's DataFrame attributes (for dataset classes that are not dataclasses)."""
    import pandas as pd

    return [k for k, v in getattr(obj, "__dict__", {}).items() if isinstance(v, pd.DataFrame)]
