"""The erasure list as an editor may save it: a byte-order mark, CRLF line ends, spaces, an id
spelled in NFD, no final newline; bytes that are not UTF-8 are refused with one line naming the
file and line (exit 2), never read around: a member on an unreadable line would stay in the model."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from recsvc.cli import app
from recsvc.errors import ConfigError
from recsvc.security.privacy import ErasureList

WINDOWS_LIST = b"\xef\xbb\xbfM000001\r\nM000002"  # UTF-8 BOM, CRLF, no final newline


def test_bom_and_crlf_are_not_part_of_the_ids(tmp_path: Path) -> None:
    path = tmp_path / "erasures.txt"
    path.write_bytes(WINDOWS_LIST)
    erasures = ErasureList(path)
    assert erasures.read() == {"M000001", "M000002"}
    assert "M000001" in erasures


def test_spaces_blank_lines_and_nfd_ids_are_normalised(tmp_path: Path) -> None:
    path = tmp_path / "erasures.txt"
    nfd = unicodedata.normalize("NFD", "José")
    path.write_bytes(f"  M1 \t\r\n\r\n\n{nfd}\n".encode())
    assert ErasureList(path).read() == {"M1", unicodedata.normalize("NFC", "José")}


def test_add_after_an_edited_list_starts_a_new_line_and_knows_its_ids(tmp_path: Path) -> None:
    path = tmp_path / "erasures.txt"
    path.write_bytes(WINDOWS_LIST)
    erasures = ErasureList(path)
    assert erasures.add("M000001") is False  # listed already, behind the BOM
    assert erasures.add("M000003") is True
    assert path.read_bytes() == WINDOWS_LIST + b"\nM000003\n"
    assert erasures.read() == {"M000001", "M000002", "M000003"}


@pytest.mark.parametrize("data", [b"m1\n\xff\xfe", b"m1\nM\xc3(2\n"])
def test_bytes_that_are_not_utf8_are_refused_naming_file_and_line(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "erasures.txt"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as err:
        ErasureList(path).read()
    message = str(err.value)
    assert str(path) in message and "line 2" in message and "UTF-8" in message
    with pytest.raises(ConfigError):
        ErasureList(path).add("m3")  # nothing appended to a list that cannot be read
    assert path.read_bytes() == data


def test_train_refuses_an_unreadable_list_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    erasures = tmp_path / "erasures.txt"
    erasures.write_bytes(b"m1\n\xff\xfe")
    monkeypatch.setenv("RECSVC_SECURITY__ERASURE_LIST", str(erasures))
    runner = CliRunner()
    data = tmp_path / "data"
    assert runner.invoke(app, ["data", "generate", "-o", str(data), "--members", "50"]).exit_code == 0
    res = runner.invoke(
        app, ["train", "-d", str(data), "--no-register", "--factors", "4", "--iterations", "1"]
    )
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)  # a clean exit, not a UnicodeDecodeError
    assert f"erasure list {erasures} line 2: not UTF-8" in res.output


@pytest.mark.slow
def test_a_member_on_a_windows_saved_list_is_not_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    erasures = tmp_path / "erasures.txt"
    erasures.write_bytes(WINDOWS_LIST)
    monkeypatch.setenv("RECSVC_SECURITY__ERASURE_LIST", str(erasures))
    runner = CliRunner()
    data, bundle = tmp_path / "data", tmp_path / "bundle"
    assert runner.invoke(app, ["data", "generate", "-o", str(data), "--members", "200"]).exit_code == 0
    generated = set(pd.read_parquet(data / "members.parquet")["member_id"].astype(str))
    assert {"M000001", "M000002", "M000003"} <= generated
    res = runner.invoke(
        app,
        ["train", "-d", str(data), "--no-register", "-o", str(bundle), "--factors", "4", "--iterations", "2"],
    )
    assert res.exit_code == 0, res.output
    trained = {m.decode() if isinstance(m, bytes) else str(m) for m in np.load(bundle / "member_ids.npy")}
    assert "M000003" in trained
    assert not {"M000001", "M000002"} & trained
