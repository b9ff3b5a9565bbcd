"""`recsvc data generate` never writes over a folder that holds anything (it may be someone's real
data): it stops with one line naming the folder and --overwrite, exit 2, and every file stays as
it was. With --overwrite it writes there; a new or empty folder needs no flag. The UTF-16 and
UTF-32 codecs refuse a file without a byte-order mark: that is one clean line too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.generate import GeneratorParams, generate
from recsvc.cli import app
from recsvc.errors import InvalidArgument

GEN = ["data", "generate", "--members", "20", "--seed", "1", "--events-per-member", "3"]
RECSVC = [sys.executable, "-m", "recsvc", "--log-level", "WARNING"]
PRECIOUS = "member_id,item_id,event_type,ts\nM1,P1,purchase,2025-01-01T00:00:00Z\n"


def _invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, [*GEN, *args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, " ".join(res.output.split())  # rich may wrap a long line


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_folder_holding_a_users_events_csv_is_refused_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "events.csv").write_text(PRECIOUS)
    code, output = _invoke("--out", str(folder))
    assert code == 2, output
    assert str(folder) in output and "--overwrite" in output and "events.csv" in output
    assert "Traceback" not in output
    assert _snapshot(folder) == {"events.csv": PRECIOUS.encode()}


def test_csv_into_a_parquet_folder_is_refused_and_deletes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "pq"
    generate(GeneratorParams(members=20, seed=2, events_per_member=3), folder)
    before = _snapshot(folder)
    assert {"events.parquet", "catalog.parquet", "members.parquet"} <= set(before)
    code, output = _invoke("--out", str(folder), "--format", "csv")
    assert code == 2, output
    assert str(folder) in output and "--overwrite" in output
    assert _snapshot(folder) == before  # no table removed, none written


def test_the_default_data_dir_is_refused_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    monkeypatch.setenv("RECSVC_DATA__DATA_DIR", str(folder))
    code, output = _invoke()
    assert code == 2 and str(folder) in output and "--overwrite" in output, output
    assert _snapshot(folder) == {"notes.txt": b"mine"}


def test_overwrite_writes_over_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "pq"
    generate(GeneratorParams(members=20, seed=2, events_per_member=3), folder)
    (folder / "notes.txt").write_text("mine")
    code, output = _invoke("--out", str(folder), "--format", "csv", "--overwrite")
    assert code == 0, output
    names = set(_snapshot(folder))
    assert {"events.csv", "catalog.csv", "members.csv", "generation.json"} <= names
    assert not names & {"events.parquet", "catalog.parquet", "members.parquet"}  # one file per table
    assert (folder / "notes.txt").read_text() == "mine"  # not the generator's: left alone
    assert pd.read_csv(folder / "members.csv")["member_id"].nunique() == 20


@pytest.mark.parametrize("existing", [False, True], ids=["new", "empty"])
def test_a_new_or_empty_folder_needs_no_flag_and_once_written_is_refused(
    tmp_path: Path, existing: bool
) -> None:
    folder = tmp_path / "a" / "b"
    if existing:
        folder.mkdir(parents=True)
    code, output = _invoke("--out", str(folder))
    assert code == 0, output
    assert "generated 20 members" in output
    written = _snapshot(folder)
    assert {"events.parquet", "generation.json"} <= set(written)
    code, output = _invoke("--out", str(folder), "--seed", "2")  # a second run, other data
    assert code == 2 and str(folder) in output and "--overwrite" in output, output
    assert _snapshot(folder) == written


def test_the_python_function_refuses_unless_told(tmp_path: Path) -> None:
    params = GeneratorParams(members=20, seed=3, events_per_member=3)
    generate(params, tmp_path / "d")
    with pytest.raises(InvalidArgument, match="--overwrite"):
        generate(params, tmp_path / "d", fmt="csv")
    assert (tmp_path / "d" / "events.parquet").exists()
    generate(params, tmp_path / "d", fmt="csv", overwrite=True)
    assert (tmp_path / "d" / "events.csv").exists() and not (tmp_path / "d" / "events.parquet").exists()


def _without_bom(folder: Path, codec: str = "utf-16-le") -> Path:
    """Catalog and events in ``codec`` (one byte order, so no byte-order mark is written)."""
    folder.mkdir()
    text = "item_id,kind,title,category,brand,price\nP1,product,Tea,grocery,own,2.50\n"
    (folder / "catalog.csv").write_bytes(text.encode(codec))
    events = "member_id,item_id,event_type,ts\nM1,P1,purchase,2026-05-01T10:00:00Z\n"
    (folder / "events.csv").write_bytes(events.encode(codec))
    return folder


@pytest.mark.parametrize(
    ("codec", "written"), [("utf-16", "utf-16-le"), ("UTF16", "utf-16-be"), ("utf-32", "utf-32-le")]
)
def test_utf16_or_32_named_for_a_file_without_bom_is_one_clean_line(
    tmp_path: Path, codec: str, written: str
) -> None:
    folder = _without_bom(tmp_path / "d", written)
    res = CliRunner().invoke(app, ["data", "validate", str(folder), "--encoding", codec])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    output = " ".join(res.output.split())
    assert "csv is not valid" in output and codec.lower() in output and str(folder) in output


def test_utf16_without_bom_exits_2_without_a_traceback(tmp_path: Path) -> None:
    folder = _without_bom(tmp_path / "d")
    proc = subprocess.run(
        [*RECSVC, "data", "validate", str(folder), "--encoding", "utf-16"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "1000"},
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "not valid utf-16 text" in lines[0] and "byte-order mark" in lines[0]
    assert "--encoding utf-16-le" in lines[0]
