"""The audit log: chained entries, concurrent appends, and verify() naming the broken line."""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections.abc import Callable
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


@pytest.mark.parametrize(
    "rewrite",
    [
        lambda line: line.replace("{", '{"seq": 999, ', 1),  # a key twice: JSON keeps the last
        lambda line: line.replace('": "', '":  "', 1),  # other spacing, same entry
        lambda line: line.rstrip("\n") + "\r\n",  # other line ends
    ],
)
def test_the_same_entry_in_other_bytes_is_found(tmp_path: Path, rewrite: Callable[[str], str]) -> None:
    audit, lines = _three(tmp_path)
    lines[1] = rewrite(lines[1])
    _write_lines(audit.path, lines)
    result = verify(audit.path)
    assert [p.line for p in result.problems] == [2]
    assert "rewritten" in result.problems[0].message


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
    assert [str(p) for p in result.problems] == [
        "log ends at seq 2 but its head file records seq 3: entry 3 was removed from the end"
    ]


def test_garbage_line_is_found_and_appends_continue(tmp_path: Path) -> None:
    audit, lines = _three(tmp_path)
    _write_lines(audit.path, [*lines, "not json\n"])
    audit.append("after_damage")
    problems = verify(audit.path).problems
    assert any(p.line == 4 and "not a valid audit entry" in p.message for p in problems)


def test_cut_log_without_head_fails(tmp_path: Path) -> None:
    # The probe: delete the last line and the head file; verify used to say "ok".
    audit, lines = _three(tmp_path)
    _write_lines(audit.path, lines[:-1])
    audit.head_path.unlink()
    result = verify(audit.path)
    assert not result.ok and result.entries == 2
    assert "head file" in str(result.problems[0]) and "is missing" in str(result.problems[0])


def test_emptied_log_without_head_fails(tmp_path: Path) -> None:
    audit, _ = _three(tmp_path)
    _write_lines(audit.path, [])
    audit.head_path.unlink()
    result = verify(audit.path)
    assert not result.ok and result.entries == 0
    assert "is missing" in str(result.problems[0])


def test_emptied_log_with_head_names_the_removed_entries(tmp_path: Path) -> None:
    audit, _ = _three(tmp_path)
    _write_lines(audit.path, [])
    assert [str(p) for p in verify(audit.path).problems] == [
        "log ends at seq 0 but its head file records seq 3: entries 1..3 were removed from the end"
    ]


def test_forged_head_names_the_right_sequence_numbers(tmp_path: Path) -> None:
    audit, _ = _three(tmp_path)
    audit.head_path.write_text(json.dumps({"seq": 3, "hash": "f" * 64}))
    (problem,) = verify(audit.path).problems
    assert str(problem).startswith(
        "head file records seq 3 with hash ffffffffffff…, but the log's entry seq 3"
    )
    assert "replaced" in str(problem)
    audit.head_path.write_text(json.dumps({"seq": 1, "hash": "f" * 64}))
    (problem,) = verify(audit.path).problems
    assert "records seq 1" in str(problem) and "entry seq 1 has hash" in str(problem)
    assert "goes on to seq 3" in str(problem)


def test_entries_added_after_the_head_are_named(tmp_path: Path) -> None:
    audit, _ = _three(tmp_path)
    saved = audit.head_path.read_text()
    audit.append("x")
    audit.append("y")
    audit.head_path.write_text(saved)
    (problem,) = verify(audit.path).problems
    assert str(problem).startswith(
        "log ends at seq 5 but its head file records seq 3: entries 4..5 were added"
    )


def test_an_append_after_cutting_keeps_the_evidence(tmp_path: Path) -> None:
    # Cut the last line and delete the head: the next append rewrites the head, but the new entry
    # records what it found, so the cut log does not verify again.
    audit, lines = _three(tmp_path)
    _write_lines(audit.path, lines[:-1])
    audit.head_path.unlink()
    entry = audit.append("after_cut")
    assert entry["seq"] == 3 and "head file was missing" in entry["tamper"]
    problems = [str(p) for p in verify(audit.path).problems]
    assert problems == [
        "line 3: entry seq 3 was appended when the head file was missing (log ended at seq 2)"
    ]
    # Cutting with the head left in place is recorded too.
    audit.append("again")
    _write_lines(audit.path, audit.path.read_text().splitlines(keepends=True)[:-1])
    entry = audit.append("after_second_cut")
    assert entry["tamper"] == "the head file recorded seq 4 but the log ended at seq 3"


def test_head_one_behind_after_a_crash_is_repaired_without_a_mark(tmp_path: Path) -> None:
    audit, _ = _three(tmp_path)
    saved = audit.head_path.read_text()
    audit.append("x")
    audit.head_path.write_text(saved)  # as if the process died between the entry and its head
    assert not verify(audit.path).ok  # until the next append, the end is not vouched for
    assert "tamper" not in audit.append("y")
    assert verify(audit.path).ok


def test_head_copy_kept_elsewhere_anchors_the_end(tmp_path: Path) -> None:
    # Rewriting <log>.head to match a cut log is not enough when a copy of the head lives elsewhere.
    audit, lines = _three(tmp_path)
    copy = tmp_path / "offsite.head"
    copy.write_text(audit.head_path.read_text())
    _write_lines(audit.path, lines[:-1])
    audit.head_path.write_text(json.dumps({"seq": 2, "hash": json.loads(lines[1])["hash"]}))
    assert verify(audit.path).ok
    assert "entry 3 was removed" in str(verify(audit.path, head_path=copy).problems[0])


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
