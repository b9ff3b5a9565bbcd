"""Group commit for the Catalog service's small change calls (``catalog.write_linger_ms``).

Calls that arrive on the event loop within the linger of each other share one change-script call
(``CatalogStore.apply_async``), so a stream of single ``SetStock`` calls pays the script's client
cost and Redis round trip once per group instead of once per call. Each caller still gets its own
per-item outcomes; an error of the write (Redis down, the write's deadline) reaches every caller
of the group, each of which answers it as before.

Order: groups are written one at a time, in the order they opened, and a call that changes an
item the open group already changes starts the next group; so each item's changes reach Redis in
the order their calls arrived. A group opened while the one before it is being written is
written when that write ends, or at its own linger, whichever is later (what arrives meanwhile
joins it).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from recsvc.catalog.store import Change, ChangeOutcome

Write = Callable[[Sequence[Change]], Awaitable[list[ChangeOutcome]]]


@dataclass(slots=True)
class _Group:
    opened: float  # loop time
    changes: list[Change] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    # per call: (its first change's position in ``changes``, how many, its answer)
    calls: list[tuple[int, int, asyncio.Future[list[ChangeOutcome]]]] = field(default_factory=list)


class GroupCommit:
    """Collects the change calls of one event loop into groups and writes each with ``write``.

    ``max_items``: a group closes when the next call would take it past this many changes (a
    call of more still goes alone, as one group)."""

    def __init__(self, write: Write, linger_s: float, max_items: int) -> None:
        self._write = write
        self._linger_s = linger_s
        self._max_items = max_items
        self._waiting: deque[_Group] = deque()  # opened, not yet being written; the last is open
        self._writer: asyncio.Task[None] | None = None

    async def apply(self, changes: Sequence[Change]) -> list[ChangeOutcome]:
        """The outcomes of ``changes`` (one call's, their ids distinct), written with the calls
        around it; raises what the group's write raised."""
        loop = asyncio.get_running_loop()
        ids = {c.item_id for c in changes}
        group = self._waiting[-1] if self._waiting else None
        full = group is not None and len(group.changes) + len(changes) > self._max_items
        if group is None or full or not ids.isdisjoint(group.ids):
            group = _Group(loop.time())
            self._waiting.append(group)
        answer: asyncio.Future[list[ChangeOutcome]] = loop.create_future()
        group.calls.append((len(group.changes), len(changes), answer))
        group.changes += changes
        group.ids |= ids
        if self._writer is None:
            self._writer = loop.create_task(self._run())
        # A caller that gives up (its deadline) cancels its own answer only: the group's write
        # goes on for the others, and may apply this call's changes too.
        return await answer

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                wait = self._waiting[0].opened + self._linger_s - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                group = self._waiting.popleft()
                try:
                    outcomes = await self._write(group.changes)
                except asyncio.CancelledError:
                    _cancel(group)
                    raise
                except Exception as exc:
                    for _, _, answer in group.calls:
                        if not answer.done():
                            answer.set_exception(exc)
                    continue
                for start, n, answer in group.calls:
                    if not answer.done():
                        answer.set_result(outcomes[start : start + n])
        except asyncio.CancelledError:  # the loop is closing (the server stops)
            while self._waiting:
                _cancel(self._waiting.popleft())
            raise
        finally:
            self._writer = None


def _cancel(group: _Group) -> None:
    for _, _, answer in group.calls:
        answer.cancel()
