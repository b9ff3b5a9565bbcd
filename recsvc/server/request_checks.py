"""Request checks shared by the servicers. Each failure is an ``InvalidArgument`` with a named
reason (the part before the colon in the gRPC status message)."""

from __future__ import annotations

from recsvc.errors import InvalidArgument
from recsvc.idmap import EMPTY, ID_CHARSET_DOC, TOO_LONG, id_problem, normalize_id
from recsvc.settings import EVENT_TYPES, DataSettings, ServingSettings


def check_id(value: str, what: str, data: DataSettings) -> str:
    """``what`` is "member_id" or "item_id"; reasons EMPTY_<WHAT>, <WHAT>_TOO_LONG, INVALID_<WHAT>.
    Returns the id in NFC, the form files are normalised to as well (recsvc.idmap)."""
    if not value.isascii():  # ASCII is NFC already: no call for the common case
        value = normalize_id(value)
    problem = id_problem(value, data.max_id_length)
    if problem is None:
        return value
    tag = what.upper()
    if problem == EMPTY:
        raise InvalidArgument(f"{what} is empty", reason=f"EMPTY_{tag}")
    if problem == TOO_LONG:
        raise InvalidArgument(
            f"{what} is {len(value.encode())} bytes in UTF-8; at most {data.max_id_length} are allowed",
            reason=f"{tag}_TOO_LONG",
        )
    raise InvalidArgument(f"{what} {value[:80]!r} may only hold {ID_CHARSET_DOC}", reason=f"INVALID_{tag}")


def check_k(k: int, serving: ServingSettings) -> int:
    if k == 0:
        return serving.default_k
    if k < 1 or k > serving.max_k:
        raise InvalidArgument(
            f"k must be 1..{serving.max_k} (0 = default {serving.default_k}), got {k}", reason="INVALID_K"
        )
    return k


def check_channel(channel: str, data: DataSettings) -> str:
    """An event channel ('' = none): one of ``data.event_channels``, the list files and training
    accept too (docs/data.md, "Channels")."""
    if channel and channel not in data.event_channels:
        raise InvalidArgument(
            f"unknown channel {channel[:40]!r}; known: {', '.join(data.event_channels)} "
            "(declare more in data.event_channels)",
            reason="UNKNOWN_CHANNEL",
        )
    return channel


MAX_SCENE_BYTES = 64


def check_scene(scene: str) -> str:
    """A page name ('' = none): printable text of at most :data:`MAX_SCENE_BYTES` bytes. It is
    written into every impression of the durable event log, so its size is the caller's to keep
    small only up to a point, and control or direction-changing characters would reach the
    reports built from that log."""
    if not scene:
        return scene
    if len(scene.encode("utf-8")) > MAX_SCENE_BYTES:
        raise InvalidArgument(
            f"scene is longer than {MAX_SCENE_BYTES} bytes in UTF-8", reason="INVALID_SCENE"
        )
    if not scene.isprintable():
        raise InvalidArgument(
            "scene may contain only printable characters (no control, format or line-break characters)",
            reason="INVALID_SCENE",
        )
    return scene


def check_event_type(event_type: str) -> str:
    if event_type not in EVENT_TYPES:
        raise InvalidArgument(
            f"unknown event_type {event_type[:40]!r}; known: {', '.join(EVENT_TYPES)}",
            reason="UNKNOWN_EVENT_TYPE",
        )
    return event_type
