"""The audit log: chained entries, concurrent appends, and verify() naming the broken line."""

from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path

import pytest

from recsvc.security.audit import AuditLog, verify
from recsvc.security.privacy import Pseudonymizer

KEY = "test-pseudonym-key-0123456789"


def _log(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "audit" / "audit.log", Pseudonymizer(KEY))


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines))


def test_entries_chain_and_verify(tmp_path: Path) -> None:
    audit = _log(tmp_path)
    first = audit.append("consent_change", member_id="M1", channel="sms", granted=False)
    second = audit.append("model_promotion", version="7", alias="champion")
    assert first["seq"] == 1 and second["seq"] == 2
    assert second["prev"] == first["hash"]
    result = verify(audit.path)
    assert result.ok, result.problems
    assert result.entries == 2


def test_raw_member_id_never_written(tmp_path: Path) -> None:
    audit = _log(tmp_path)
    audit.append("erasure", member_id="MEMBER-SECRET-42")
    text = audit.path.read_text()
    assert "MEMBER-SECRET-42" not in text
    assert json.loads(text)["member"] == Pseudonymizer(KEY).pseudonym("MEMBER-SECRET-42")


def test_member_id_without_pseudonymizer_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="raw member_id"):
        AuditLog(tmp_path / "a.log").append("erasure", member_id="M1")


def test_reserved_field_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        _log(tmp_path).append("x", hash="0")


def _three(tmp_path: Path) -> tuple[AuditLog, list[str]]:
    audit = _log(tmp_path)
    for i in range(3):
        audit.append("model_promotion", version=str(i))
    return audit, audit.path.read_text().splitlines(keepends=True)


def test_edited_line_is_found(tmp_path: Path) -> None:
    audit, lines = _three(tmp_path)
    lines[1] = lines[1].replace('"version": "1"', '"version": "9"')
    _write_lines(audit.path, lines)
    result = verify(audit.path)
    assert not result.ok
    assert [p.line for p in result.problems] == [2]
    assert "edited" in result.problems[0].message


def test_removed_line_is_found(tmp_path: Path) -> None:
    audit, lines = _three(tmp_path)
    del lines[1]
    _write_lines(audit.path, lines)
    result = verify(audit.path)
    assert {p.line for p in result.problems} == {2}


def test_reordered_lines_are_found(tmp_path: Path) -> None:
    audit, lines = _three(tmp_path)
    lines[0], lines[1] = lines[1], lines[0]
    _write_lines(audit.path, lines)
    assert {p.line for p in verify(audit.path).problems} >= {1, 2}


def test_removed_last_line_is_found_by_head(tmp_path: Path) -> None:
    audit, lines = _three(tmp_path)
    _write_lines(audit.path, lines[:-1])
    result = verify(audit.path)
    assert not result.ok
    assert "removed from or added to the end" in str(result.problems[0])


def test_garbage_line_is_found_and_appends_continue(tmp_path: Path) -> None:
    audit, lines = _three(tmp_path)
    _write_lines(audit.path, [*lines, "not json\n"])
    audit.append("after_damage")
    problems = verify(audit.path).problems
    assert any(p.line == 4 and "not a valid audit entry" in p.message for p in problems)


def test_missing_log_reported(tmp_path: Path) -> None:
    assert "not found" in str(verify(tmp_path / "nope.log").problems[0])


def test_concurrent_thread_appends_keep_the_chain(tmp_path: Path) -> None:
    audit = _log(tmp_path)

    def worker(n: int) -> None:
        for i in range(25):
            audit.append("t", worker=n, i=i)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = verify(audit.path)
    assert result.ok, result.problems[:3]
    assert result.entries == 100


def _process_appends(path: str, n: int) -> None:
    log = AuditLog(Path(path), Pseudonymizer(KEY))
    for i in range(20):
        log.append("p", proc=n, i=i)


def test_concurrent_process_appends_keep_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_appends, args=(str(path), n)) for n in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    result = verify(path)
    assert result.ok, result.problems[:3]
    assert result.entries == 60
