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
  script once and sending those calls again (a NOSCRIPT call ran nothing).

Errors: a Redis error reply for one call is returned in that call's place (a
``redis.ResponseError``); a connection error or timeout raises (``redis.RedisError``) and drops the
connection, whose unread replies could no longer be matched to their calls.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import redis
from redis.exceptions import NoScriptError, ResponseError

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


class ScriptRunner:
    def __init__(self, client: redis.Redis, source: str) -> None:
        self._pool = client.connection_pool
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        # redis-py >= 5.3 takes no command name (and warns when given one); older versions need it
        params = inspect.signature(self._pool.get_connection).parameters
        name = params.get("command_name")
        self._connection_args: tuple[str, ...] = (
            ("EVALSHA",) if name is not None and name.default is inspect.Parameter.empty else ()
        )
        self._shared: tuple[tuple[Arg, ...], bytes] | None = None  # last shared args, packed

    def call(self, keys: Sequence[str], args: Sequence[Arg], shared: tuple[Arg, ...] = ()) -> Any:
        """One call, one round trip (two the first time after Redis lost its script cache)."""
        reply = self.call_many([(keys, args)], shared)[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def call_many(
        self,
        calls: Iterable[Call],
        shared: tuple[Arg, ...] = (),
        convert: Callable[[int, Any], Any] | None = None,
    ) -> list[Any]:
        """Replies in the order of ``calls``; an error reply is a ``ResponseError`` in its place.
        Each call's ARGV is its own arguments followed by ``shared``. ``calls`` may be a
        generator: it is consumed while earlier commands are already on their way.
        ``convert(position, reply)`` turns each successful reply into the value returned for it,
        as soon as it is read, so that work overlaps with Redis still running the later calls."""
        conn = self._pool.get_connection(*self._connection_args)
        try:
            pack = _packer()
            packed = self._send(conn, pack, calls, shared, self._packed_shared(shared, pack))
            replies = _read(conn, range(len(packed)), convert)
            missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            if missing:
                conn.send_packed_command([pack(("SCRIPT", "LOAD", self.source))], check_health=False)
                loaded = _read(conn, range(1), None)[0]
                if isinstance(loaded, Exception):
                    raise loaded
                conn.send_packed_command([b"".join(packed[i] for i in missing)], check_health=False)
                for i, reply in zip(missing, _read(conn, missing, convert), strict=True):
                    replies[i] = reply
            return replies
        except BaseException:
            # replies may be left unread on the socket: never hand this connection out again
            conn.disconnect()
            raise
        finally:
            self._pool.release(conn)

    def _packed_shared(self, shared: tuple[Arg, ...], pack: Packer) -> bytes:
        # callers pass the same tuple object for a policy version: pack it once, not per call
        cached = self._shared
        if cached is not None and cached[0] is shared:
            return cached[1]
        body = _body(pack(shared)) if shared else b""
        self._shared = (shared, body)
        return body

    def _send(
        self,
        conn: Any,
        pack: Packer,
        calls: Iterable[Call],
        shared: tuple[Arg, ...],
        tail: bytes,
    ) -> list[bytes]:
        sha = self.sha.encode()
        heads: dict[tuple[int, int], bytes] = {}  # "*<n> EVALSHA <sha> <numkeys>" by shape
        packed: list[bytes] = []
        sent = 0
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
            packed.append(head + _body(pack((*keys, *args))) + tail)
            if len(packed) - sent >= SEND_EVERY:
                # a list: redis-py sendall()s each item; one bytes object per write
                conn.send_packed_command([b"".join(packed[sent:])], check_health=sent == 0)
                sent = len(packed)
        if len(packed) > sent:
            conn.send_packed_command([b"".join(packed[sent:])], check_health=sent == 0)
        return packed


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
