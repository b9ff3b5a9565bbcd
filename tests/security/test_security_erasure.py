"""ForgetMember against a real redis-server: keys gone, suppression kept, processes told, audited."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import redis

from recsvc.errors import InvalidArgument, StoreUnavailable
from recsvc.redis_client import RedisClient, connect
from recsvc.redis_keys import member_key
from recsvc.security.audit import AuditLog, verify
from recsvc.security.erasure import ErasureListener, check_member_id, forget_member, is_suppressed
from recsvc.security.privacy import ErasureList, Pseudonymizer

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_url(redis_backend: str) -> str:
    """Every test here that uses Redis runs on a single server and on a Redis Cluster."""
    return redis_backend


PREFIX = "recsvc"
PSEUDO = Pseudonymizer("test-pseudonym-key-0123")


def _seed(r: RedisClient, member: str) -> None:
    r.rpush(member_key(PREFIX, member, "events"), "e1", "e2")
    r.zadd(member_key(PREFIX, member, "throttle:day:20261122"), {"r1": 1})
    r.zadd(member_key(PREFIX, member, "throttle:week"), {"r1": 1})
    r.set(member_key(PREFIX, member, "vec"), b"\x00" * 16)
    r.hset(member_key(PREFIX, member, "consent"), "sms", "1")


def _deps(tmp_path: Path) -> tuple[ErasureList, AuditLog]:
    return ErasureList(tmp_path / "erasures.txt"), AuditLog(tmp_path / "audit.log", PSEUDO)


def test_forget_removes_only_that_member_and_keeps_suppression(redis_url: str, tmp_path: Path) -> None:
    r = connect(redis_url)
    _seed(r, "M1")
    _seed(r, "M10")  # shares a prefix with M1: must survive
    r.set(f"{PREFIX}:global:model_version", "3")
    erasures, audit = _deps(tmp_path)
    got: list[str] = []
    listener = ErasureListener(r, PREFIX, got.append).start()
    try:
        result = forget_member(
            "M1", redis=r, prefix=PREFIX, erasures=erasures, audit=audit, reason="ticket-1"
        )
        deadline = threading.Event()
        for _ in range(50):
            if got:
                break
            deadline.wait(0.05)
    finally:
        listener.stop()
    assert result.deleted_keys == {"events": 1, "throttle": 2, "vec": 1, "consent": 1}
    assert result.deleted_total == 5
    assert result.suppressed and result.added_to_erasure_list
    assert result.processes_notified == 1
    assert got == ["M1"]
    remaining = sorted(k.decode() for k in r.scan_iter(match="*"))
    assert remaining == sorted(
        [member_key(PREFIX, "M1", "suppressed"), f"{PREFIX}:global:model_version"]
        + [k.decode() for k in r.scan_iter(match=f"{PREFIX}:{{m:M10}}:*")]
    )
    assert len([k for k in remaining if "{m:M10}" in k]) == 5
    assert is_suppressed(r, PREFIX, "M1") and not is_suppressed(r, PREFIX, "M10")
    assert erasures.read() == {"M1"}
    text = audit.path.read_text()
    assert "M1" not in text.replace(PSEUDO("M1"), "")
    assert PSEUDO("M1") in text and '"erasure"' in text and "ticket-1" in text
    assert verify(audit.path).ok
    r.close()


def test_forget_is_idempotent(redis_url: str, tmp_path: Path) -> None:
    r = connect(redis_url, decode_responses=True)
    _seed(r, "M2")
    erasures, audit = _deps(tmp_path)
    forget_member("M2", redis=r, prefix=PREFIX, erasures=erasures, audit=audit)
    again = forget_member("M2", redis=r, prefix=PREFIX, erasures=erasures, audit=audit)
    assert again.deleted_total == 0 and again.suppressed and not again.added_to_erasure_list
    assert is_suppressed(r, PREFIX, "M2")
    assert erasures.path.read_text() == "M2\n"
    r.close()


def test_redis_down_still_lists_member_and_says_repeat(tmp_path: Path) -> None:
    from recsvc.localstack import free_port

    r = redis.Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    erasures, audit = _deps(tmp_path)
    with pytest.raises(StoreUnavailable, match="repeat ForgetMember"):
        forget_member("M3", redis=r, prefix=PREFIX, erasures=erasures, audit=audit)
    assert erasures.read() == {"M3"}  # the next training run leaves them out regardless


@pytest.mark.parametrize("bad", ["", "M*", "M1}:x", "x" * 65, "M 1", "会员 1", "M\u202e1"])
def test_member_id_checked(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        check_member_id(bad, 64)


def test_forgotten_members_learn_erasures_from_other_processes(redis_url: str, tmp_path: Path) -> None:
    from recsvc.security.erasure import ForgottenMembers

    r = connect(redis_url)
    forgotten = ForgottenMembers(frozenset({"OLD"}))
    dropped: list[str] = []
    forgotten.on_forget(dropped.append)
    listener = ErasureListener(r, PREFIX, forgotten.add).start()
    try:
        erasures, audit = _deps(tmp_path)
        other = connect(redis_url)  # "another server process"
        forget_member("M5", redis=other, prefix=PREFIX, erasures=erasures, audit=audit)
        other.close()
        for _ in range(60):
            if "M5" in forgotten:
                break
            threading.Event().wait(0.05)
    finally:
        listener.stop()
    assert "M5" in forgotten and "OLD" in forgotten and "M6" not in forgotten
    assert dropped == ["M5"]
    r.close()
