"""Append-only, tamper-evident audit log (JSON lines, one entry per line).

Writes: ``settings.security.audit_log`` (default ``var/audit/audit.log``). Each entry carries the
SHA-256 of the previous entry (``prev``) and its own hash (``hash``, over the canonical JSON of
every other field), so editing, reordering or removing any line breaks the chain at that line.
Removing trailing entries is caught by comparing against the head file (``<log>.head``), which
each append rewrites. A log without its head fails verification (deleting the head with the last
lines must not make a cut log pass), and an append that finds the head missing or not matching
the log's end records that in the new entry (``tamper``), so the next append cannot quietly
re-anchor a cut log either. An attacker who can rewrite both files and recompute every hash is
out of scope — keep a copy of the head elsewhere (``verify(head_path=...)``) or ship the log to
write-once storage for that (docs/security.md).

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
_RESERVED = frozenset({"seq", "ts", "event", "prev", "hash", "tamper"})


def _line(entry: dict[str, Any]) -> str:
    """An entry as the log holds it: one canonical JSON line."""
    return json.dumps(entry, sort_keys=True, ensure_ascii=False, default=str) + "\n"


def _entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# What parsing a tampered line can raise: bad JSON or fields (ValueError, KeyError, TypeError), a
# number too large for an int ("seq": 1e400 parses as inf: OverflowError) and nesting deeper than
# the parser's recursion limit (RecursionError).
_UNPARSABLE = (ValueError, KeyError, TypeError, OverflowError, RecursionError)


def _why(exc: BaseException) -> str:
    """A short reason for a parse failure (a RecursionError's message names no input)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, OverflowError):
        return f"a number out of range: {exc}"
    return str(exc)


def head_path_of(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def _read_head(head_path: Path) -> tuple[int, str] | None:
    """(seq, hash) from a head file; None when it does not exist. ValueError when unreadable."""
    try:
        text = head_path.read_text()
    except FileNotFoundError:
        return None
    try:
        head = json.loads(text)
        return int(head["seq"]), str(head["hash"])
    except _UNPARSABLE as exc:
        raise ValueError(f"not a head record: {_why(exc)}") from exc


def _head_mismatch(head_path: Path, last_seq: int, last_hash: str, last_prev: str | None) -> str | None:
    """Why the head file does not vouch for a log ending at ``last_seq``/``last_hash`` (0/"" =
    empty log), or None. A head exactly one entry behind, with that entry chained to it, is a
    crash between writing the entry and the head: the append repairs it without a mark."""
    try:
        head = _read_head(head_path)
    except (OSError, ValueError) as exc:
        return f"the head file was unreadable ({exc})"
    if head is None:
        return None if last_seq == 0 else f"the head file was missing (log ended at seq {last_seq})"
    seq, digest = head
    if (seq, digest) == (last_seq, last_hash):
        return None
    if seq == last_seq - 1 and digest == last_prev:
        return None
    return f"the head file recorded seq {seq} but the log ended at seq {last_seq}"


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

    def __init__(
        self,
        path: Path,
        pseudonymize: Callable[[str], str] | None = None,
        on_write_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.head_path = head_path_of(self.path)
        self._pseudonymize = pseudonymize
        # called with the event name when an entry cannot be written (the server counts it)
        self._on_write_failure = on_write_failure
        self._lock = threading.Lock()

    def check_appendable(self) -> None:
        """Raise ``OSError`` unless :meth:`append` can write here: the folder exists or can be
        created, a file can be created in it (the head file is replaced through one) and the log,
        when it exists, opens for appending. Tries it rather than asking ``os.access``, which says
        yes to root for a folder under ``/proc`` or on a read-only mount. Writes nothing to the
        log: an empty log without a head would fail ``verify``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        probe = self.path.with_name(f".{self.path.name}.{os.getpid()}.probe")
        probe.touch()
        probe.unlink()
        if self.path.exists():
            with open(self.path, "ab"):
                pass
        if self.head_path.is_dir():
            raise IsADirectoryError(21, "its head file is a directory", str(self.head_path))

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
        try:
            return self._write(event, fields)
        except OSError:
            # the caller decides what a lost entry means (a served call goes on); it is counted
            if self._on_write_failure is not None:
                self._on_write_failure(event)
            raise

    def _write(self, event: str, fields: dict[str, Any]) -> dict[str, Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                last = _last_line(fh)
                tamper: str | None = None
                if last:
                    try:
                        prev_entry = json.loads(last)
                        prev, seq = str(prev_entry["hash"]), int(prev_entry["seq"]) + 1
                        tamper = _head_mismatch(self.head_path, seq - 1, prev, prev_entry.get("prev"))
                    except _UNPARSABLE:
                        # A damaged tail must not stop auditing; verify() will report it.
                        log.error("audit log %s has a damaged last line; chaining to its raw hash", self.path)
                        prev, seq = hashlib.sha256(last).hexdigest(), -1
                else:
                    prev, seq = GENESIS, 1
                    tamper = _head_mismatch(self.head_path, 0, "", None)
                entry: dict[str, Any] = {
                    "seq": seq,
                    "ts": datetime.now(UTC).isoformat(timespec="microseconds"),
                    "event": event,
                    **fields,
                    "prev": prev,
                }
                if tamper:
                    # Auditing goes on, but the chain keeps the evidence: this append must not
                    # turn a cut log into one whose head matches again.
                    log.error("audit log %s: %s before this append", self.path, tamper)
                    entry["tamper"] = tamper
                entry["hash"] = _entry_hash(entry)
                line = _line(entry)
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


def verify(path: Path, head_path: Path | None = None) -> VerifyResult:
    """Walk the chain and report every line that was edited, reordered, inserted or removed.

    The end of the log is checked against ``head_path`` (default ``<log>.head``; pass a copy kept
    elsewhere to anchor it off this host). A missing head is a problem whenever the log exists:
    without it, entries cut from the end cannot be told from entries never written.
    """
    path = Path(path)
    result = VerifyResult(path)
    if not path.exists():
        result.problems.append(
            Problem(0, f"audit log not found: {path} (never written here, or deleted: nothing to vouch for)")
        )
        return result
    head_path = Path(head_path) if head_path is not None else head_path_of(path)
    head_readable = True
    try:
        head = _read_head(head_path)
    except (OSError, ValueError) as exc:
        result.problems.append(Problem(0, f"head file {head_path} is unreadable ({exc})"))
        head, head_readable = None, False
    head_entry_hash: str | None = None  # the log's hash of the entry the head names
    prev_hash, prev_seq = GENESIS, 0
    last_seq = 0  # seq of the last valid entry (0 = none)
    last_valid = True  # whether the last line is a valid entry
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                result.problems.append(Problem(lineno, "empty line"))
                continue
            try:
                entry = json.loads(raw)
                stored, seq, prev = str(entry["hash"]), int(entry["seq"]), str(entry["prev"])
            except _UNPARSABLE as exc:
                result.problems.append(Problem(lineno, f"not a valid audit entry ({_why(exc)})"))
                prev_hash, prev_seq = hashlib.sha256(raw.rstrip(b"\n")).hexdigest(), prev_seq + 1
                last_valid = False
                continue
            result.entries += 1
            last_seq, last_valid = seq, True
            if head is not None and seq == head[0]:
                head_entry_hash = stored
            if _entry_hash(entry) != stored:
                result.problems.append(Problem(lineno, f"entry seq {seq} was edited (hash mismatch)"))
            elif raw.rstrip(b"\n") != _line(entry).rstrip("\n").encode():
                # the same entry in other bytes: a key given twice (JSON keeps the last), other
                # spacing or line ends; the hash covers the parsed entry, the writer's bytes are one
                result.problems.append(
                    Problem(lineno, f"entry seq {seq} was rewritten (its bytes are not the ones written)")
                )
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
            if entry.get("tamper"):
                result.problems.append(
                    Problem(lineno, f"entry seq {seq} was appended when {entry['tamper']}")
                )
            prev_hash, prev_seq = stored, seq
    if not head_readable:
        return result  # reported above; the end of the log cannot be checked
    if head is None:
        result.problems.append(
            Problem(
                0,
                f"head file {head_path} is missing: the end of the log ({result.entries} entries) "
                "cannot be checked, entries may have been cut from it",
            )
        )
        return result
    result.problems.extend(_end_problems(head, head_entry_hash, last_seq, prev_hash, last_valid))
    return result


def _end_problems(
    head: tuple[int, str], head_entry_hash: str | None, last_seq: int, last_hash: str, last_valid: bool
) -> list[Problem]:
    """What the head file says about the end of the log, with the sequence numbers involved."""
    seq, digest = head
    if not last_valid:
        return [Problem(0, f"the log's last line is not a valid entry; its head file records seq {seq}")]
    if seq == last_seq and digest == last_hash:
        return []
    if seq > last_seq:
        cut = f"entry {seq} was" if seq == last_seq + 1 else f"entries {last_seq + 1}..{seq} were"
        return [
            Problem(
                0,
                f"log ends at seq {last_seq} but its head file records seq {seq}: {cut} removed from the end",
            )
        ]
    if seq == last_seq:
        return [
            Problem(
                0,
                f"head file records seq {seq} with hash {digest[:12]}…, but the log's entry seq {seq} "
                f"has hash {last_hash[:12]}…: the last entry or the head file was replaced",
            )
        ]
    added = f"entry {last_seq} was" if last_seq == seq + 1 else f"entries {seq + 1}..{last_seq} were"
    if head_entry_hash is not None and head_entry_hash != digest:
        return [
            Problem(
                0,
                f"head file records seq {seq} with hash {digest[:12]}…, but the log's entry seq {seq} "
                f"has hash {head_entry_hash[:12]}…; the log goes on to seq {last_seq}",
            )
        ]
    return [
        Problem(
            0,
            f"log ends at seq {last_seq} but its head file records seq {seq}: {added} added "
            "after the head was written (not by recsvc, or the head update was lost in a crash)",
        )
    ]
