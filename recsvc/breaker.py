"""A circuit breaker for calls to Redis, and a thread that probes Redis while the breaker is open.

States: *closed* (calls go through; ``failure_threshold`` consecutive failures open it), *open*
(calls are refused at once instead of each waiting for a socket timeout) and, once
``reset_timeout_s`` has passed, *half-open*: exactly one caller is let through as the probe
(``allow`` is True for it alone); its success closes the breaker, its failure opens it for
another cool-down. A probe that never reports (its caller failed in an unrelated way) is
considered lost after another cool-down, and the next caller probes.

``BreakerWatch`` probes from a background thread (a ``PING``), so the breaker closes within about
a cool-down of Redis coming back even when no request arrives to probe: a load balancer that took
the process out of rotation while the breaker was open sends none. With ``idle_check`` it also
pings while the breaker is closed and no call has reported for a cool-down, so an outage is
noticed (and shown by readiness) without traffic.

Not pybreaker: recsvc's hot paths send a command and read its reply later and decide themselves
what counts as a failure (a timeout or refused connection, not an error reply), so they need the
``allow``/``success``/``failure`` steps rather than a wrapped call; and the half-open state must
admit one probe, not every caller that arrives during it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    """Thread-safe. Listeners get ``True`` when the breaker opens and ``False`` when it closes
    (not for the half-open step), called outside the lock."""

    def __init__(
        self,
        name: str,
        failure_threshold: int,
        reset_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or reset_timeout_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and reset_timeout_s > 0")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_at = 0.0  # when the half-open probe was let through
        self._reported_at = clock()
        self._listeners: list[Callable[[bool], None]] = []

    def add_listener(self, listener: Callable[[bool], None]) -> None:
        self._listeners.append(listener)

    @property
    def state(self) -> str:
        return self._state

    @property
    def is_open(self) -> bool:
        """Open or half-open: Redis is not known to answer."""
        return self._state != CLOSED

    def idle_for(self) -> float:
        """Seconds since a call last reported success or failure."""
        return self._clock() - self._reported_at

    def allow(self) -> bool:
        """May this call go to Redis? Closed: yes. Open: no, except for the one probe per cool-down."""
        if self._state == CLOSED:  # the hot path: no lock
            return True
        with self._lock:
            now = self._clock()
            if self._state == OPEN and now - self._opened_at >= self.reset_timeout_s:
                self._state = HALF_OPEN
                self._probe_at = now
                return True
            if self._state == HALF_OPEN and now - self._probe_at >= self.reset_timeout_s:
                self._probe_at = now  # the last probe never reported: let another one through
                return True
            return self._state == CLOSED

    def success(self) -> None:
        self._reported_at = self._clock()
        if self._state == CLOSED and self._failures == 0:
            return
        with self._lock:
            was_open = self._state != CLOSED
            self._state = CLOSED
            self._failures = 0
        if was_open:
            log.info("event=breaker_closed breaker=%s", self.name)
            self._notify(False)

    def failure(self) -> None:
        with self._lock:
            now = self._reported_at = self._clock()
            if self._state == OPEN:
                return  # a call that started before the breaker opened: the cool-down stands
            self._failures += 1
            if self._state == CLOSED and self._failures < self.failure_threshold:
                return
            opened = self._state == CLOSED
            self._state = OPEN
            self._opened_at = now
        if opened:
            log.warning(
                "event=breaker_opened breaker=%s failures=%d retry_s=%s",
                self.name,
                self.failure_threshold,
                self.reset_timeout_s,
            )
            self._notify(True)

    def _notify(self, opened: bool) -> None:
        for listener in self._listeners:
            try:
                listener(opened)
            except Exception:  # a listener's bug must not break the caller's Redis call
                log.exception("event=breaker_listener_failed breaker=%s", self.name)


class BreakerWatch:
    """A daemon thread that probes Redis with ``ping`` (raises on failure) every cool-down while
    the breaker is open, and, with ``idle_check``, while it is closed but no call has reported
    for a cool-down. ``failures`` are the exceptions that count against Redis."""

    def __init__(
        self,
        breaker: CircuitBreaker,
        ping: Callable[[], object],
        failures: tuple[type[BaseException], ...],
        *,
        idle_check: bool = False,
    ) -> None:
        self._breaker = breaker
        self._ping = ping
        self._failures = failures
        self._idle_check = idle_check
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def start(self) -> BreakerWatch:
        with self._start_lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name=f"recsvc-breaker-{self._breaker.name}", daemon=True
                )
                self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    def probe_once(self) -> None:
        b = self._breaker
        due = b.is_open or (self._idle_check and b.idle_for() >= b.reset_timeout_s)
        if not due or not b.allow():
            return
        try:
            self._ping()
        except self._failures:
            b.failure()
        except Exception:  # an answer that is an error still proves Redis is there
            b.success()
        else:
            b.success()

    def _run(self) -> None:
        # A quarter of the cool-down: a probe is due at most that long after it becomes allowed.
        tick = self._breaker.reset_timeout_s / 4
        while not self._stop.wait(tick):
            try:
                self.probe_once()
            except Exception:  # never let the watch die: readiness depends on it
                log.exception("event=breaker_watch_failed breaker=%s", self._breaker.name)
