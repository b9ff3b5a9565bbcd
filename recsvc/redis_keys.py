"""Redis key names. Every key that holds a member's state carries the member id as a hash tag
(``{m:<id>}``), so all of one member's keys live in one Redis Cluster slot and one Lua script may
touch them atomically."""

from __future__ import annotations


def member_tag(member_id: str) -> str:
    return "{m:" + member_id + "}"


def member_key(prefix: str, member_id: str, suffix: str) -> str:
    """e.g. ``recsvc:{m:M0001}:events``."""
    return f"{prefix}:{member_tag(member_id)}:{suffix}"


def global_key(prefix: str, suffix: str) -> str:
    """Keys not tied to one member (e.g. model reload notices)."""
    return f"{prefix}:global:{suffix}"
