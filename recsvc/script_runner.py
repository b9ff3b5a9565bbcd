"""Call one Lua script many times in one Redis round trip, without redis-py's ``Pipeline``.

Profiling ``Throttle.decide_many`` showed redis-py's pipeline machinery (``Script.__call__``, the
per-command ``execute_command`` and the generic packer) costing more client time than Redis spent
running the scripts. ``ScriptRunner``:

- packs only what differs per call: ``EVALSHA <sha> <numkeys>`` and the arguments every call
  shares (``shared``, e.g. the policy) are packed once and spliced around each call's packed keys
  and arguments (``hiredis.pack_command``, a project dependency; redis-py's packer without it);
- writes the commands in slices while they are still being built, so Redis starts running the
  first scripts while the rest are packed, then reads the replies in order;
- answers a ``NOSCRIPT`` reply (Redis restarted or its script cache was flushed) by loading the
  script once and sending those calls again (a NOSCRIPT call ran nothing);
- on Redis Cluster, sends each call to the primary owning its first key's slot (all of a call's
  keys share the member's hash tag), one connection and one stream of commands per primary, all
  written before any reply is read; a ``MOVED``/``ASK``/``TRYAGAIN`` reply (a failover or
  resharding moved the slot; nothing ran) refreshes the slot map and sends those calls once more.

Errors: a Redis error reply for one call is returned in that call's place (a
``redis.ResponseError``). A connection error or timeout drops the connection, whose unread replies
could no longer be matched to their calls; the error takes the place of each of that server's
replies, and is raised when every server of the batch failed (always, on a single server).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

import redis
from redis.exceptions import NoScriptError, ResponseError

from recsvc.redis_client import REDIRECTED, RedisClient, is_cluster, node_pool, refresh_topology

Arg = str | bytes | int | float
Packer = Callable[[tuple[Arg, ...]], bytes]

_hiredis_pack: Packer | None
try:
    import hiredis

    _hiredis_pack = cast(Packer, hiredis.pack_command)  # its stub types the tuple as 1 element
except ImportError:  # pragma: no cover - hiredis is a dependency; without it, pack in Python
    _hiredis_pack = None
Call = tuple[Sequence[str], Sequence[Arg]]  # (KEYS, the call's own ARGV)
SEND_EVERY = 64  # commands per socket write: small enough that Redis starts early


class _Node:
    """One server's share of a ``call_many``: its connection, the commands packed for it, their
    positions in the caller's order, and the error that ended its part (if one did)."""

    __slots__ = ("conn", "error", "packed", "pool", "positions", "sent")

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.conn: Any = None
        self.error: Exception | None = None
        self.packed: list[bytes] = []
        self.positions: list[int] = []
        self.sent = 0

    def flush(self) -> None:
        if self.error is not None or len(self.packed) == self.sent:
            return
        try:
            # a list: redis-py sendall()s each item; one bytes object per write
            self.conn.send_packed_command([b"".join(self.packed[self.sent :])], check_health=self.sent == 0)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.fail(exc)
        self.sent = len(self.packed)

    def fail(self, exc: Exception) -> None:
        self.error = exc
        self.conn.disconnect()  # unread replies: never reuse this connection


class ScriptRunner:
    def __init__(self, client: RedisClient, source: str) -> None:
        self._client = client
        self._cluster = is_cluster(client)
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        # redis-py >= 5.3 takes no command name (and warns when given one); older versions need it
        params = inspect.signature(redis.ConnectionPool.get_connection).parameters
        name = params.get("command_name")
        self._connection_args: tuple[str, ...] = (
            ("EVALSHA",) if name is not None and name.default is inspect.Parameter.empty else ()
        )
        self._shared: tuple[tuple[Arg, ...], bytes] | None = None  # last shared args, packed

    def call(
        self,
        keys: Sequence[str],
        args: Sequence[Arg],
        shared: tuple[Arg, ...] = (),
        wait: tuple[int, int] | None = None,
    ) -> Any:
        """One call, one round trip (two the first time after Redis lost its script cache)."""
        reply = self.call_many([(keys, args)], shared, wait=wait)[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def call_many(
        self,
        calls: Iterable[Call],
        shared: tuple[Arg, ...] = (),
        convert: Callable[[int, Any], Any] | None = None,
        wait: tuple[int, int] | None = None,
    ) -> list[Any]:
        """Replies in the order of ``calls``; an error reply is a ``ResponseError`` in its place.
        ``wait=(replicas, timeout_ms)``: each server's calls are followed by ``WAIT replicas
        timeout_ms``; when fewer replicas confirmed, that server's replies become ``NotReplicated``
        errors (the writes happened on the primary but could still be lost in a failover).
        Each call's ARGV is its own arguments followed by ``shared``. ``calls`` may be a
        generator: it is consumed while earlier commands are already on their way.
        ``convert(position, reply)`` turns each successful reply into the value returned for it,
        as soon as it is read, so that work overlaps with Redis still running the later calls."""
        pack = _packer()
        sent: list[tuple[bytes, str]] = []  # (command, first key) by position, for a resend
        replies = self._run(self._pack(calls, shared, pack, sent), pack, convert, wait)
        moved = [i for i, r in enumerate(replies) if isinstance(r, REDIRECTED)]
        if moved:
            # The slot map changed under us (a replica promoted, a slot migrated); nothing ran.
            refresh_topology(self._client, min_interval_s=0.0)
            again = self._run(((i, *sent[i]) for i in moved), pack, convert, wait)
            for i, reply in zip(moved, again, strict=True):
                replies[i] = reply
        return replies

    def _pack(
        self, calls: Iterable[Call], shared: tuple[Arg, ...], pack: Packer, sent: list[tuple[bytes, str]]
    ) -> Iterator[tuple[int, bytes, str]]:
        """(position, the call packed as one EVALSHA, its first key), yielded while the caller
        is already sending the earlier ones."""
        sha = self.sha.encode()
        tail = self._packed_shared(shared, pack)
        heads: dict[tuple[int, int], bytes] = {}  # "*<n> EVALSHA <sha> <numkeys>" by shape
        for keys, args in calls:
            shape = (len(keys), len(args))
            head = heads.get(shape)
            if head is None:
                n = 3 + shape[0] + shape[1] + len(shared)
                numkeys = str(shape[0]).encode()
                head = heads[shape] = b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
                    n,
                    len(sha),
                    sha,
                    len(numkeys),
                    numkeys,
                )
            command = head + _body(pack((*keys, *args))) + tail
            route = keys[0] if keys else ""  # a call without keys may run on any node
            sent.append((command, route))
            yield len(sent) - 1, command, route

    def _node(self, nodes: dict[str, _Node], route: str) -> _Node:
        if self._cluster:
            name, pool = node_pool(self._client, route)
        else:
            name, pool = "", cast(redis.Redis, self._client).connection_pool
        node = nodes.get(name)
        if node is None:
            node = nodes[name] = _Node(pool)
            try:
                node.conn = pool.get_connection(*self._connection_args)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                node.error = exc
        return node

    def _run(
        self,
        commands: Iterable[tuple[int, bytes, str]],
        pack: Packer,
        convert: Callable[[int, Any], Any] | None,
        wait: tuple[int, int] | None = None,
    ) -> list[Any]:
        """Send each command to its node, then read every node's replies; replies in the order
        of ``commands``. A node that fails (refused, reset, timed out) gets its error in place of
        each of its replies, so one failed primary does not lose the decisions the others made;
        when every node failed, that error is raised."""
        nodes: dict[str, _Node] = {}
        single: _Node | None = None
        order: list[int] = []
        try:
            for position, command, route in commands:
                order.append(position)
                if self._cluster or single is None:
                    node = self._node(nodes, route)
                    single = None if self._cluster else node
                else:
                    node = single
                node.packed.append(command)
                node.positions.append(position)
                if len(node.packed) - node.sent >= SEND_EVERY:
                    node.flush()
            found: dict[int, Any] = {}
            for node in nodes.values():
                if wait is not None:
                    node.packed.append(pack(("WAIT", wait[0], wait[1])))
                node.flush()
            for node in nodes.values():
                replies = self._replies(node, pack, convert, wait)
                found.update(zip(node.positions, replies, strict=True))
            failed = [node.error for node in nodes.values() if node.error is not None]
            if failed and len(failed) == len(nodes):
                raise failed[0]
            if failed and self._cluster:
                refresh_topology(self._client)  # a primary may have failed over
            return [found[p] for p in order]
        except BaseException:
            # replies may be left unread on the sockets: never hand these connections out again
            for node in nodes.values():
                if node.conn is not None:
                    node.conn.disconnect()
            if self._cluster:
                refresh_topology(self._client)
            raise
        finally:
            for node in nodes.values():
                if node.conn is not None:
                    node.pool.release(node.conn)

    def _replies(
        self,
        node: _Node,
        pack: Packer,
        convert: Callable[[int, Any], Any] | None,
        wait: tuple[int, int] | None,
    ) -> list[Any]:
        if node.error is not None:
            return [node.error] * len(node.positions)
        try:
            replies = _read(node.conn, node.positions, convert)
            acked = int(node.conn.read_response()) if wait is not None else 0
            missing = [k for k, r in enumerate(replies) if isinstance(r, NoScriptError)]
            if missing:
                node.conn.send_packed_command([pack(("SCRIPT", "LOAD", self.source))], check_health=False)
                loaded = _read(node.conn, range(1), None)[0]
                if isinstance(loaded, Exception):
                    raise loaded
                again = [node.packed[k] for k in missing]
                if wait is not None:
                    again.append(pack(("WAIT", wait[0], wait[1])))
                node.conn.send_packed_command([b"".join(again)], check_health=False)
                for k, reply in zip(
                    missing, _read(node.conn, [node.positions[k] for k in missing], convert), strict=True
                ):
                    replies[k] = reply
                if wait is not None:
                    acked = min(acked, int(node.conn.read_response()))
            if wait is not None and acked < wait[0]:
                error = NotReplicated(f"{acked} of {wait[0]} replicas confirmed within {wait[1]} ms")
                replies = [r if isinstance(r, Exception) else error for r in replies]
            return replies
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            node.fail(exc)
            return [exc] * len(node.positions)

    def _packed_shared(self, shared: tuple[Arg, ...], pack: Packer) -> bytes:
        # callers pass the same tuple object for a policy version: pack it once, not per call
        cached = self._shared
        if cached is not None and cached[0] is shared:
            return cached[1]
        body = _body(pack(shared)) if shared else b""
        self._shared = (shared, body)
        return body


class NotReplicated(redis.RedisError):
    """The write is on the primary, but fewer replicas than asked confirmed it in time."""


def _packer() -> Packer:
    """A function packing a tuple of arguments as one RESP command ("*<n>\r\n" then each)."""
    if _hiredis_pack is not None:
        return _hiredis_pack
    return _pack_in_python


def _pack_in_python(parts: tuple[Arg, ...]) -> bytes:
    # what redis-py's encoder does (str as UTF-8, numbers as their repr), without its splitting
    # of a first argument that contains spaces
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else (part if isinstance(part, str) else repr(part)).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _body(packed: bytes) -> bytes:
    """A packed command without its "*<n>\\r\\n" count, to splice into a longer command."""
    return packed[packed.index(b"\r\n") + 2 :]


def _read(conn: Any, positions: Iterable[int], convert: Callable[[int, Any], Any] | None) -> list[Any]:
    out: list[Any] = []
    for position in positions:
        try:
            reply = conn.read_response()
        except ResponseError as exc:  # an error reply; the connection stays in step
            out.append(exc)
            continue
        out.append(convert(position, reply) if convert is not None else reply)
    return out
