"""Erasing a member from the event log (docs/privacy.md, "Forgetting a member").

A member's records are in three places: the streams (not yet on disk), the Parquet files the sink
wrote, and records a server process still buffers or writes late (an impression queued a moment
before the erasure). Every record names its member by the keyed pseudonym (``member``), so the
pseudonym is what erasure matches on, in all three kinds: every pseudonym of the member
(``Pseudonymizer.pseudonyms``, under the current and each previous key), since records written
before a rotation of ``security.pseudonym_key`` name the member under the old key.

Two Redis keys under one hash tag (one Redis Cluster slot, so both are written in one
transaction):

- ``<prefix>:{log-erased}:members``: the pseudonyms of erased members (a set). The sink looks up
  the members of every batch in it before writing, and drops their records: whatever reaches a
  stream after the erasure never reaches disk.
- ``<prefix>:{log-erased}:purge``: pseudonyms whose Parquet rows are still to be removed (a list).
  The sink rewrites the files that hold them (``rewrite_without``), then removes the request.

``LogEraser.forget`` (called by ``ForgetMember``) writes both, then deletes the member's entries
from their shard's streams (XDEL). ``LogEraser.restore`` (``RestoreMember``) takes the member out
of the set, so what is recorded about them from then on is logged again.

A member forgotten before a key rotation is in the set under the old key only, while records
about them written since name them under the new one. ``LogEraser.mark_under_current_key``, run
by every server process at start-up over the erasure list, adds the current-key pseudonym of each
listed member still in the set under a previous key; a re-registered member is in it under none
and stays logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsvc.eventlog.files import write_atomically
from recsvc.eventlog.log import KINDS, shard_of, stream_key
from recsvc.redis_client import RedisClient
from recsvc.security.privacy import Pseudonymizer

log = logging.getLogger(__name__)

TAG = "{log-erased}"
_SCAN_CHUNK = 1000
_MARK_CHUNK = 1000  # members per script call: ~1 ms of Redis time, ~70 kB of arguments

# ARGV[1]: "1" to queue the added pseudonyms for the purge too; then per member: n, the
# pseudonym under the current key, the n - 1 under previous keys. The current one is added when a
# previous one is in the set (erased before the rotation, not re-registered since: a
# re-registration removes every one). One script, so a re-registration cannot fall between the
# look-up and the add and be undone by it.
_MARK_SCRIPT = """
local queue = ARGV[1] == '1'
local added = 0
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local current = ARGV[i + 1]
  if redis.call('SISMEMBER', KEYS[1], current) == 0 then
    for j = i + 2, i + n do
      if redis.call('SISMEMBER', KEYS[1], ARGV[j]) == 1 then
        redis.call('SADD', KEYS[1], current)
        if queue then
          redis.call('RPUSH', KEYS[2], current)
        end
        added = added + 1
        break
      end
    end
  end
  i = i + n + 1
end
return added
"""


def erased_key(prefix: str) -> str:
    """e.g. ``recsvc:{log-erased}:members``."""
    return f"{prefix}:{TAG}:members"


def purge_key(prefix: str) -> str:
    return f"{prefix}:{TAG}:purge"


class LogEraser:
    """The service's side: record the erasure for the sink and empty the streams of the member."""

    def __init__(self, client: RedisClient, prefix: str, shards: int, pseudonymizer: Pseudonymizer) -> None:
        self._client = client
        self._prefix = prefix
        self._shards = shards
        self._pseudonym = pseudonymizer
        self._mark = client.register_script(_MARK_SCRIPT)

    def forget(self, member_id: str) -> int:
        """Mark the member erased for the sink, then XDEL their stream entries; how many were
        deleted. Idempotent; raises ``redis.RedisError`` (repeat the erasure)."""
        # All of them: the sink and the purge only compare pseudonyms, so marking each one is
        # what makes them drop and remove rows written under an old key too.
        who = self._pseudonym.pseudonyms(member_id)
        # Set before the streams are emptied: a sink that read an entry a moment ago finds the
        # member in the set when it writes the batch, and drops it.
        pipe = self._client.pipeline(transaction=True)
        pipe.sadd(erased_key(self._prefix), *who)
        pipe.rpush(purge_key(self._prefix), *who)
        pipe.execute()
        shard = shard_of(member_id, self._shards)
        return sum(
            self._delete_entries(stream_key(self._prefix, shard, kind), frozenset(who)) for kind in KINDS
        )

    def restore(self, member_id: str) -> bool:
        """Log the member's records again (re-registration); True when they were in the set."""
        who = self._pseudonym.pseudonyms(member_id)
        return int(self._client.srem(erased_key(self._prefix), *who)) > 0

    def mark_under_current_key(self, member_ids: Iterable[str], *, purge: bool = False) -> int:
        """Mark under the current key each of ``member_ids`` (the erasure list) that is marked
        under a previous key only, so the sink drops what is logged about them since the rotation;
        how many were added. ``purge`` also queues those for the Parquet rewrite: for when records
        may have been logged before the marks. Idempotent; raises ``redis.RedisError``."""
        if not self._pseudonym.has_previous_keys:
            return 0
        keys = [erased_key(self._prefix), purge_key(self._prefix)]
        added = 0
        args: list[str | int] = ["1" if purge else "0"]
        members = 0
        for member_id in member_ids:
            who = self._pseudonym.pseudonyms(member_id)
            args += [len(who), *who]
            members += 1
            if members == _MARK_CHUNK:
                added += int(self._mark(keys=keys, args=args))
                del args[1:]
                members = 0
        if members:
            added += int(self._mark(keys=keys, args=args))
        return added

    def _delete_entries(self, key: str, who: frozenset[str]) -> int:
        deleted = 0
        start = "-"
        while True:
            entries: Any = self._client.xrange(key, start, "+", count=_SCAN_CHUNK)
            ids = [entry_id for entry_id, fields in entries if record_member(fields) in who]
            if ids:
                deleted += int(self._client.xdel(key, *ids))
            if len(entries) < _SCAN_CHUNK:
                return deleted
            last = entries[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else str(last))


def record_member(fields: dict[Any, Any] | None) -> str:
    """The pseudonym a stream entry names ("" for a deleted or unreadable entry)."""
    if not fields:
        return ""
    raw = fields.get(b"d", fields.get("d"))
    if raw is None:
        return ""
    try:
        return str(json.loads(raw).get("member", ""))
    except (ValueError, AttributeError):
        return ""


@dataclass
class PurgeStats:
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    files: int = 0


def rewrite_without(log_dir: Path, pseudonyms: set[str]) -> PurgeStats:
    """Rewrite every Parquet part file under ``log_dir`` that holds a row of one of ``pseudonyms``,
    without those rows. Each file is replaced atomically under its own name, even when no row is
    left (an empty file): the sink's restart reads the highest id on disk from the file names,
    so a name must never go away."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    stats = PurgeStats()
    wanted = pa.array(sorted(pseudonyms), pa.string())
    for kind in KINDS:
        for path in sorted((Path(log_dir) / f"kind={kind}").glob("date=*/part-*.parquet")):
            # ParquetFile, not read_table: the latter would add the folder's date=... as a column
            with pq.ParquetFile(path) as part:
                members = part.read(columns=["member"])["member"]
                if not pc.any(pc.is_in(members, value_set=wanted)).as_py():
                    continue
                table = part.read()
            keep = pc.invert(pc.is_in(table["member"], value_set=wanted))
            kept = table.filter(keep)
            write_atomically(kept, path)
            stats.rows[kind] += table.num_rows - kept.num_rows
            stats.files += 1
    return stats
