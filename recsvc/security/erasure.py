"""Forget a member: Redis state, the event log, every server process's memory, future training,
marketing.

Reads/writes Redis (``<prefix>:{m:<id>}:*`` keys, found with SCAN per node so it works on Cluster),
publishes on ``<prefix>:global:erasures``, writes ``<prefix>:{m:<id>}:suppressed`` (kept until an
operator re-registers the member: the one record that stops marketing and every new write about
them), appends to the erasure list and the audit log.

Order matters: the erasure list is written first so that a crash half-way still keeps the member
out of the next training run, and the request can simply be repeated (every step is idempotent).
The suppression record is written before the member's keys are deleted: every script that stores
something about a member checks it in the same atomic step, so nothing recorded concurrently
survives the erasure (a write either ran before the record, and its key is deleted, or is refused).

The event log (``recsvc.eventlog.erasure.LogEraser``, passed in as ``event_log``): the member is
marked erased for the sink, which drops their records from every batch it writes from then on and
rewrites the Parquet files that hold their rows; their entries still in the streams are deleted.

``restore_member`` is the explicit, audited re-registration that lifts the suppression record; the
member's old data stays gone (the erasure list keeps them out of training and every process keeps
ignoring their trained vector).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from recsvc.errors import InvalidArgument, StoreUnavailable
from recsvc.idmap import check_id
from recsvc.redis_client import STORE_ERRORS
from recsvc.redis_keys import global_key, member_key, member_tag
from recsvc.security.audit import AuditLog
from recsvc.security.privacy import ErasureList

log = logging.getLogger(__name__)

SUPPRESSED_SUFFIX = "suppressed"
ERASURE_CHANNEL_SUFFIX = "erasures"


def suppression_key(prefix: str, member_id: str) -> str:
    return member_key(prefix, member_id, SUPPRESSED_SUFFIX)


def erasure_channel(prefix: str) -> str:
    return global_key(prefix, ERASURE_CHANNEL_SUFFIX)


def is_suppressed(redis: Any, prefix: str, member_id: str) -> bool:
    """True when the member was erased and not re-registered since: no message may reach them and
    nothing new is stored about them."""
    return bool(redis.exists(suppression_key(prefix, member_id)))


def check_member_id(member_id: str, max_length: int) -> str:
    """The member id in NFC, checked by the one id rule (recsvc.idmap)."""
    return check_id(member_id, "member_id", max_length)


def _glob_escape(text: str) -> str:
    # The id rule (recsvc.idmap) already excludes glob characters; escaping keeps MATCH exact
    # should it ever widen.
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class EventLogErasure(Protocol):
    """What erasure needs from the event log (``recsvc.eventlog.erasure.LogEraser``)."""

    def forget(self, member_id: str) -> int: ...

    def restore(self, member_id: str) -> bool: ...


@dataclass
class ForgetResult:
    deleted_keys: dict[str, int] = field(default_factory=dict)
    suppressed: bool = False
    added_to_erasure_list: bool = False
    processes_notified: int = 0
    log_entries_deleted: int = 0  # the member's event-log entries still in the streams

    @property
    def deleted_total(self) -> int:
        return sum(self.deleted_keys.values())


def forget_member(
    member_id: str,
    *,
    redis: Any,
    prefix: str,
    erasures: ErasureList,
    audit: AuditLog,
    reason: str = "",
    requested_by: str = "",
    event_log: EventLogErasure | None = None,
) -> ForgetResult:
    """Erase ``member_id`` everywhere recsvc keeps it (see the module docstring)."""
    result = ForgetResult()
    result.added_to_erasure_list = erasures.add(member_id)
    keep = suppression_key(prefix, member_id)
    head = f"{prefix}:{member_tag(member_id)}:"
    kinds: Counter[str] = Counter()
    try:
        redis.set(keep, "1")  # first: from here on every write about the member is refused
        batch: list[str] = []
        for raw in redis.scan_iter(match=_glob_escape(head) + "*", count=500):
            key = _text(raw)
            if key == keep:
                continue
            batch.append(key)
            kinds[key[len(head) :].split(":", 1)[0]] += 1
            if len(batch) >= 500:
                redis.delete(*batch)
                batch.clear()
        if batch:
            redis.delete(*batch)
        if event_log is not None:
            result.log_entries_deleted = event_log.forget(member_id)
        result.suppressed = True
        result.processes_notified = int(redis.publish(erasure_channel(prefix), member_id))
    except STORE_ERRORS as exc:
        # The member is on the erasure list already; repeating the request finishes the job.
        raise StoreUnavailable(f"Redis failed during erasure ({exc}); repeat ForgetMember") from exc
    result.deleted_keys = dict(kinds)
    audit.append(
        "erasure",
        member_id=member_id,
        requested_by=requested_by,
        reason=reason,
        deleted_keys=result.deleted_total,
        log_entries_deleted=result.log_entries_deleted,
        processes_notified=result.processes_notified,
    )
    log.info("erased member (%d redis keys)", result.deleted_total)
    return result


def restore_member(
    member_id: str,
    *,
    redis: Any,
    prefix: str,
    audit: AuditLog,
    reason: str,
    requested_by: str = "",
    event_log: EventLogErasure | None = None,
) -> bool:
    """Re-register an erased member: lift the suppression record so new data about them is
    stored again. Returns False when there was no record to lift. Audited either way.

    Nothing old comes back: their Redis keys were deleted, the erasure list still keeps them out of
    every training run, and every server process still ignores their trained vector (a returning
    member starts cold and is personalised from new events only)."""
    if not reason.strip():
        raise InvalidArgument(
            "reason is required to re-register an erased member (e.g. a ticket number)",
            reason="REASON_REQUIRED",
        )
    try:
        lifted = int(redis.delete(suppression_key(prefix, member_id))) == 1
        if event_log is not None:
            event_log.restore(member_id)  # what is recorded about them from now on is logged again
    except STORE_ERRORS as exc:
        raise StoreUnavailable(f"Redis failed during re-registration ({exc}); repeat RestoreMember") from exc
    audit.append("restore", member_id=member_id, requested_by=requested_by, reason=reason, lifted=lifted)
    log.info("re-registered member (suppression lifted=%s)", lifted)
    return lifted


class ForgottenMembers:
    """Members erased in this process's lifetime plus those on the erasure list at start-up.

    The served bundle still holds a forgotten member's trained vector until the next training run;
    serving treats anyone in here as an unknown member (popularity only, nothing personal).
    """

    def __init__(self, initial: frozenset[str] = frozenset()) -> None:
        self._ids: set[str] = set(initial)
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[str], None]] = []

    def on_forget(self, callback: Callable[[str], None]) -> None:
        """Also call ``callback(member_id)`` for each erasure (to drop other in-process state)."""
        self._callbacks.append(callback)

    def add(self, member_id: str) -> None:
        with self._lock:
            self._ids.add(member_id)
        for callback in self._callbacks:
            try:
                callback(member_id)
            except Exception:
                log.exception("in-process erasure callback failed")

    def __contains__(self, member_id: object) -> bool:
        return member_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._ids))  # a snapshot: erasures may arrive while it is read


class ErasureListener:
    """Calls ``on_forget(member_id)`` in this process for every erasure published on Redis.

    The server starts one per process so in-process caches (loaded member vectors, recent-event
    caches) drop the member at once. ``stop()`` ends the thread.
    """

    def __init__(self, redis: Any, prefix: str, on_forget: Callable[[str], None]) -> None:
        self._pubsub = redis.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(**{erasure_channel(prefix): self._handle})
        self._on_forget = on_forget
        self._thread: Any = None
        self._lock = threading.Lock()

    def _handle(self, message: dict[str, Any]) -> None:
        try:
            self._on_forget(_text(message["data"]))
        except Exception:
            log.exception("in-process erasure handler failed")

    def start(self) -> ErasureListener:
        with self._lock:
            if self._thread is None:
                self._thread = self._pubsub.run_in_thread(
                    sleep_time=0.2, daemon=True, exception_handler=self._on_error
                )
        return self

    @staticmethod
    def _on_error(exc: BaseException, pubsub: Any, thread: Any) -> None:
        import redis as redis_lib

        if isinstance(exc, redis_lib.ConnectionError | redis_lib.TimeoutError):
            # Keep listening through Redis outages: redis-py resubscribes on the next get_message.
            log.warning("event=erasure_listener_error error=%s retrying", type(exc).__name__)
            time.sleep(1.0)
            return
        # The client was closed (server shutting down) or something unexpected: stop listening.
        log.info("event=erasure_listener_stopped error=%s", type(exc).__name__)
        thread.stop()

    def stop(self) -> None:
        with self._lock:
            if self._thread is not None:
                self._thread.stop()
                self._thread.join(timeout=2)
                self._thread = None
        self._pubsub.close()
