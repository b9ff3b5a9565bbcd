"""Append-only, tamper-evident audit log (JSON lines, one entry per line).

Writes: ``settings.security.audit_log`` (default ``var/audit/audit.log``). Each entry carries the
SHA-256 of the previous entry (``prev``) and its own hash (``hash``, over the canonical JSON of
every other field), so editing, reordering or removing any line breaks the chain at that line.
Removing trailing entries is caught by comparing against the head file (``<log>.head``), which
each append rewrites; an attacker who can rewrite both files and recompute every hash is out of
scope — ship the log to write-once storage for that (docs/security.md).

Appends are safe across threads and processes: an exclusive ``flock`` on the log file is held
while the last entry is read and the new one written.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GENESIS = "0" * 64
# Fields the log fills in itself; callers may not pass them.
_RESERVED = frozenset({"seq", "ts", "event", "prev", "hash"})


def _entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _last_line(fh: Any) -> bytes:
    """The last non-empty line of a binary file opened for reading, without reading it all."""
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    pos, chunk, buf = end, 4096, b""
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        fh.seek(pos)
        buf = fh.read(step) + buf
        stripped = buf.rstrip(b"\n")
        if b"\n" in stripped:
            return stripped.rsplit(b"\n", 1)[1]
    return buf.rstrip(b"\n")


class AuditLog:
    """``append(event, **fields)`` writes one chained entry and returns it.

    ``member_id=...`` is never written raw: when a ``pseudonymize`` function is given it is stored
    as ``member`` (the keyed pseudonym); without one, passing ``member_id`` is an error.
    """

    def __init__(self, path: Path, pseudonymize: Callable[[str], str] | None = None) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + ".head")
        self._pseudonymize = pseudonymize
        self._lock = threading.Lock()

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        if not event:
            raise ValueError("audit event name must not be empty")
        clash = _RESERVED & fields.keys()
        if clash:
            raise ValueError(f"audit fields may not use reserved names: {sorted(clash)}")
        if "member_id" in fields:
            raw = fields.pop("member_id")
            if self._pseudonymize is None:
                raise ValueError("AuditLog has no pseudonymizer; refusing to write a raw member_id")
            fields["member"] = self._pseudonymize(str(raw))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                last = _last_line(fh)
                if last:
                    try:
                        prev_entry = json.loads(last)
                        prev, seq = str(prev_entry["hash"]), int(prev_entry["seq"]) + 1
                    except (ValueError, KeyError, TypeError):
                        # A damaged tail must not stop auditing; verify() will report it.
                        log.error("audit log %s has a damaged last line; chaining to its raw hash", self.path)
                        prev, seq = hashlib.sha256(last).hexdigest(), -1
                else:
                    prev, seq = GENESIS, 1
                entry: dict[str, Any] = {
                    "seq": seq,
                    "ts": datetime.now(UTC).isoformat(timespec="microseconds"),
                    "event": event,
                    **fields,
                    "prev": prev,
                }
                entry["hash"] = _entry_hash(entry)
                line = json.dumps(entry, sort_keys=True, ensure_ascii=False, default=str) + "\n"
                fh.seek(0, os.SEEK_END)
                fh.write(line.encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
                tmp = self.head_path.with_name(f"{self.head_path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"seq": seq, "hash": entry["hash"]}) + "\n")
                os.replace(tmp, self.head_path)
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return entry


@dataclass
class Problem:
    line: int  # 1-based line number in the log file (0 = the file as a whole)
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


@dataclass
class VerifyResult:
    path: Path
    entries: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: Path) -> VerifyResult:
    """Walk the chain and report every line that was edited, reordered, inserted or removed."""
    path = Path(path)
    result = VerifyResult(path)
    if not path.exists():
        result.problems.append(Problem(0, f"audit log not found: {path}"))
        return result
    prev_hash, prev_seq = GENESIS, 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                result.problems.append(Problem(lineno, "empty line"))
                continue
            try:
                entry = json.loads(raw)
                stored, seq, prev = str(entry["hash"]), int(entry["seq"]), str(entry["prev"])
            except (ValueError, KeyError, TypeError) as exc:
                result.problems.append(Problem(lineno, f"not a valid audit entry ({exc})"))
                prev_hash, prev_seq = hashlib.sha256(raw.rstrip(b"\n")).hexdigest(), prev_seq + 1
                continue
            result.entries += 1
            if _entry_hash(entry) != stored:
                result.problems.append(Problem(lineno, f"entry seq {seq} was edited (hash mismatch)"))
            if prev != prev_hash:
                result.problems.append(
                    Problem(
                        lineno,
                        f"entry seq {seq} does not follow the previous line (removed, "
                        "inserted or reordered entries before it)",
                    )
                )
            if seq != prev_seq + 1:
                result.problems.append(Problem(lineno, f"sequence jumps from {prev_seq} to {seq}"))
            prev_hash, prev_seq = stored, seq
    head_path = path.with_name(path.name + ".head")
    if head_path.exists():
        try:
            head = json.loads(head_path.read_text())
            if int(head["seq"]) != prev_seq or str(head["hash"]) != prev_hash:
                result.problems.append(
                    Problem(
                        0,
                        f"log ends at seq {prev_seq} but its head file records seq {head['seq']}: "
                        "entries were removed from or added to the end",
                    )
                )
        except (ValueError, KeyError, TypeError) as exc:
            result.problems.append(Problem(0, f"head file {head_path} is unreadable ({exc})"))
    return result
