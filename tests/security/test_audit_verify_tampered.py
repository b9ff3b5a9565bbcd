"""`verify` and `recsvc audit verify` report a tampered line or head file that the JSON parser
accepts but no entry can be (a number too large for an int, nesting deeper than the parser's
recursion limit) as tampering: a problem naming the line, exit 1, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from recsvc.cli import app
from recsvc.security.audit import AuditLog, head_path_of, verify

DEEP = "[" * 100_000


def _log(tmp_path: Path, entries: int = 3) -> Path:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    for i in range(entries):
        log.append("test", n=i)
    assert verify(path).ok
    return path


def _replace_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[lineno - 1] = text + "\n"
    path.write_text("".join(lines))


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('{"seq": 1e400, "hash": "x", "prev": "y"}', "out of range"),
        ('{"seq": -1e400, "hash": "x", "prev": "y"}', "out of range"),
        (DEEP, "nested too deeply"),
        ('{"seq": [' + DEEP[1:] + "}", "nested too deeply"),
    ],
    ids=["huge-seq", "huge-negative-seq", "deep-list", "deep-in-entry"],
)
def test_unparsable_lines_are_tampering(tmp_path: Path, line: str, why: str) -> None:
    path = _log(tmp_path)
    _replace_line(path, 2, line)
    result = verify(path)
    assert not result.ok
    assert any(
        p.line == 2 and "not a valid audit entry" in p.message and why in p.message for p in result.problems
    )
    # the line after it no longer follows the chain: reported too, the walk went on
    assert any(p.line == 3 for p in result.problems)


@pytest.mark.parametrize(
    "head",
    ['{"seq": 1e400, "hash": "x"}', '{"seq": NaN, "hash": "x"}', DEEP],
    ids=["huge-seq", "nan-seq", "deep"],
)
def test_unparsable_head_is_reported_unreadable(tmp_path: Path, head: str) -> None:
    path = _log(tmp_path)
    head_path_of(path).write_text(head)
    result = verify(path)
    assert [str(p) for p in result.problems if "head file" in p.message and "unreadable" in p.message]


def test_an_append_after_an_unparsable_tail_or_head_goes_on(tmp_path: Path) -> None:
    path = _log(tmp_path)
    head_path_of(path).write_text('{"seq": 1e400, "hash": "x"}')
    entry = AuditLog(path).append("after-head")
    assert "unreadable" in entry["tamper"]
    _replace_line(path, 4, DEEP)
    AuditLog(path).append("after-tail")  # chains to the damaged line's raw hash
    assert not verify(path).ok


@pytest.mark.parametrize(
    ("line", "head"),
    [
        ('{"seq": 1e400, "hash": "x", "prev": "y"}', None),
        (DEEP, None),
        (None, '{"seq": 1e400, "hash": "x"}'),
    ],
    ids=["huge-seq-line", "deep-line", "huge-seq-head"],
)
def test_cli_reports_tampering_in_lines_and_exits_1(
    tmp_path: Path, line: str | None, head: str | None
) -> None:
    path = _log(tmp_path)
    if line is not None:
        _replace_line(path, 2, line)
    if head is not None:
        head_path_of(path).write_text(head)
    res = CliRunner().invoke(app, ["audit", "verify", str(path)])
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit)
    assert f"tampered {path}:" in res.output
    assert "Traceback" not in res.output
