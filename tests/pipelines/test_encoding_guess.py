"""Encoding detection between GB18030 and Windows-1252 (docs/data.md, Encodings, rule 5): a Western
Excel export (cp1252) decodes as GB18030 too (``CRÈME`` is ``CR萂E``), so what each reading reads
as decides; Chinese GBK exports and UTF-8 (with and without BOM) read as before; ``--encoding``
names one file's encoding; every file's encoding is logged and in the summary."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from pipelines.contract import CATALOG, EVENTS
from pipelines.encoding import resolve_encoding
from pipelines.validate import validate_dir
from recsvc.errors import DataContractError
from recsvc.settings import DataSettings

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DATA = DataSettings()

FRENCH = [
    "CRÈME BRÛLÉE RAMEKIN",
    "NOËL DECORATION WREATH",
    "FIANCÉE GREETING CARD",
    "Tarte à la crème",
    "Bûche de Noël",
    "Œufs frais « plein air »",
    "Café moulu 250 g – arabica",
    "Pâte à tartiner",
]
GERMAN = ["Größe XL Weißbier", "Müsli Früchte", "Käse-Spätzle", "Süßigkeiten €2,50", "Bügeleisen 2000 W"]
SPANISH = ["Jamón ibérico", "Piña en almíbar", "Azúcar moreno", "¿Qué? Turrón de Jijona", "Año nuevo, señal"]
CHINESE = ["婴儿奶粉900g", "有机绿茶，250克", "T恤 男款 纯棉", "iPhone手机壳", "母婴湿巾（80抽）",
           "进口红酒·750ml"]  # fmt: skip


def _write(folder: Path, titles: list[str], encoding: str, *, padding: int = 0) -> Path:
    """A catalog with ``titles`` (after ``padding`` plain ASCII rows) in ``encoding``, and one
    UTF-8 event on the first titled item."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"PLAIN ASCII PRODUCT {i}" for i in range(padding)] + titles
    catalog = pd.DataFrame(
        {
            "item_id": [f"P{i}" for i in range(len(names))],
            "kind": "product",
            "title": names,
            "category": "grocery",
            "brand": "own label",
            "price": "2.50",
            "in_stock": "true",
            "published_at": "",
            "featured_item_ids": "",
        },
        columns=list(CATALOG.columns),
    )
    catalog.to_csv(folder / "catalog.csv", index=False, encoding=encoding)
    event = [f"M1,P{padding},purchase,2026-05-01T10:00:00Z,app,1,2.50"]
    (folder / "events.csv").write_text("\n".join([",".join(EVENTS.columns), *event]) + "\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("titles", [FRENCH, GERMAN, SPANISH], ids=["fr", "de", "es"])
@pytest.mark.parametrize("padding", [0, 3000], ids=["accented", "ascii-heavy"])
def test_a_windows_1252_catalog_reads_as_its_words_not_as_gb18030(
    tmp_path: Path, titles: list[str], padding: int
) -> None:
    folder = _write(tmp_path / "d", titles, "cp1252", padding=padding)
    raw = (folder / "catalog.csv").read_bytes()
    gb = raw.decode("gb18030", errors="replace")
    assert "\ufffd" in gb or gb != raw.decode("cp1252")  # GB18030 mostly decodes it: the trap
    result = validate_dir(folder, DATA, now=NOW)
    catalog = result.tables["catalog"]
    assert catalog.encoding == "cp1252"
    assert set(titles) <= set(catalog.clean["title"])
    assert result.summary()["tables"]["catalog"]["encoding"] == "cp1252"


def test_the_probe_catalog_is_no_longer_read_as_chinese(tmp_path: Path) -> None:
    # The probe's file: every accent is followed by a letter, so all of it decodes as GB18030.
    folder = _write(tmp_path / "d", FRENCH[:3], "cp1252")
    text = (folder / "catalog.csv").read_bytes().decode("gb18030")
    assert "CR萂E BR跮蒃 RAMEKIN" in text
    clean = validate_dir(folder, DATA, now=NOW).catalog
    assert list(clean["title"]) == FRENCH[:3]


@pytest.mark.parametrize("padding", [0, 3000], ids=["chinese", "ascii-heavy"])
@pytest.mark.parametrize("encoding", ["gbk", "gb18030"])
def test_gbk_chinese_product_names_stay_gb18030(tmp_path: Path, padding: int, encoding: str) -> None:
    folder = _write(tmp_path / "d", CHINESE, encoding, padding=padding)
    (folder / "catalog.csv").read_bytes().decode("cp1252")  # cp1252 decodes it too: a real contest
    catalog = validate_dir(folder, DATA, now=NOW).tables["catalog"]
    assert catalog.encoding == "gb18030"
    assert set(CHINESE) <= set(catalog.clean["title"])


@pytest.mark.parametrize(("encoding", "codec"), [("utf-8", "utf-8"), ("utf-8-sig", "utf-8-sig")])
def test_utf8_with_and_without_bom_is_utf8(tmp_path: Path, encoding: str, codec: str) -> None:
    folder = _write(tmp_path / "d", FRENCH + CHINESE, encoding)
    catalog = validate_dir(folder, DATA, now=NOW).tables["catalog"]
    assert catalog.encoding == codec
    assert set(FRENCH + CHINESE) <= set(catalog.clean["title"])


def test_every_files_encoding_is_logged_with_how_it_was_decided(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _write(tmp_path / "d", FRENCH, "cp1252")
    with caplog.at_level(logging.INFO):
        validate_dir(folder, DATA, now=NOW)
    text = caplog.text
    assert "encoding file=catalog.csv encoding=cp1252" in text and "CRÈME BRÛLÉE" in text
    assert "encoding file=events.csv encoding=utf-8" in text
    assert "validated table=catalog encoding=cp1252" in text


def test_neither_reading_plausible_stops_with_both_shown(tmp_path: Path) -> None:
    # "xôÐx": as cp1252 a lower then a capital accent inside a word; as GB18030 one hanzi wedged
    # between ASCII letters. Neither reads as text: ask, never guess.
    folder = _write(tmp_path / "d", ["Box" + "ôÐ" + "x", "Plain"], "cp1252")
    with pytest.raises(DataContractError) as err:
        validate_dir(folder, DATA, now=NOW)
    message = str(err.value)
    assert "catalog.csv cannot be told apart" in message
    assert "--encoding gb18030 or --encoding cp1252" in message


def test_encoding_can_be_named_per_table(tmp_path: Path) -> None:
    folder = _write(tmp_path / "d", FRENCH, "cp1252")
    # events in UTF-8 with a Chinese member id: one codec for every file cannot read both
    events = folder / "events.csv"
    events.write_text(events.read_text(encoding="utf-8").replace("M1,", "母婴1,"), encoding="utf-8")
    with pytest.raises(DataContractError, match=r"events\.csv is not valid cp1252 text"):
        validate_dir(folder, DATA, now=NOW, encoding="cp1252")
    result = validate_dir(folder, DATA, now=NOW, encoding="catalog=cp1252")
    assert result.tables["catalog"].encoding == "cp1252"
    assert result.tables["events"].encoding == "utf-8"  # not named: detected
    assert list(result.events["member_id"].astype(str)) == ["母婴1"]
    named = validate_dir(folder, DATA, now=NOW, encoding=" catalog = cp1252 , events=utf-8 ")
    assert named.tables["events"].encoding == "utf-8-sig"
    # A name that overrides the guess applies to its file only: read as GB18030, as told (the
    # probe's titles decode as GB18030; a strict decode still refuses what does not).
    _write(folder, FRENCH[:3], "cp1252")
    forced = validate_dir(folder, DATA, now=NOW, encoding="catalog=gb18030")
    assert "CR萂E BR跮蒃 RAMEKIN" in set(forced.catalog["title"])


@pytest.mark.parametrize("spec", ["orders=cp1252", "catalog=", "catalog=cp1252,=utf-8"])
def test_a_per_table_encoding_names_a_table(tmp_path: Path, spec: str) -> None:
    folder = _write(tmp_path / "d", FRENCH, "cp1252")
    with pytest.raises(DataContractError, match="is not TABLE=CODEC"):
        resolve_encoding(folder / "catalog.csv", spec)


def test_cp1252_that_gb18030_cannot_decode_is_read_when_it_reads_as_text(tmp_path: Path) -> None:
    # "CAFÉ," ends a word with its accent: not GB18030 (a lead byte before a comma). It used to
    # stop the file (neither UTF-8 nor GB18030); it is plain Western text.
    titles = ["CAFÉ", "NÉ À PARIS", "Crème brûlée"]
    folder = _write(tmp_path / "d", titles, "cp1252")
    with pytest.raises(UnicodeDecodeError):
        (folder / "catalog.csv").read_bytes().decode("gb18030")
    catalog = validate_dir(folder, DATA, now=NOW).tables["catalog"]
    assert catalog.encoding == "cp1252" and set(titles) <= set(catalog.clean["title"])


# UTF-8 text that also decodes as GB18030 (every character two bytes, U+0080 to U+07FF): rule 4.
ROMANCE_UTF8 = {
    "fr": ["Pâte à tartiner", "Tarte à la crème", "Bûche de Noël", "À la carte", "Tee é"],
    "pt": ["Água de coco", "Pão de queijo à mineira", "O café é forte", "Ó mar salgado"],
    "it": ["Caffè è pronto", "Città di Castello", "Perché no", "È arrivato"],
    "es": ["Jamón ibérico", "Piña en almíbar", "Azúcar moreno", "¿Qué? Turrón de Jijona", "Año nuevo, señal"],
    "de": ["Größe XL Weißbier", "Müsli Früchte", "Käse-Spätzle", "Bügeleisen 2000 W"],
}


@pytest.mark.parametrize("language", list(ROMANCE_UTF8))
def test_utf8_western_titles_read_as_utf8_even_with_one_letter_words(tmp_path: Path, language: str) -> None:
    # "à", "é", "è", "ò": one-letter words standing between spaces. Their GB18030 reading is one
    # hanzi alone ("P芒te 脿 tartiner"), the accent inside a word one hanzi wedged in it ("P芒te").
    titles = ROMANCE_UTF8[language]
    for title in titles:
        folder = _write(tmp_path / language / str(titles.index(title)), [title], "utf-8")
        raw = (folder / "catalog.csv").read_bytes()
        assert raw.decode("gb18030") != raw.decode("utf-8")  # both decode: the ambiguous case
        catalog = validate_dir(folder, DATA, now=NOW).tables["catalog"]
        assert catalog.encoding == "utf-8" and title in set(catalog.clean["title"])
    folder = _write(tmp_path / language / "all", titles, "utf-8")
    assert set(titles) <= set(validate_dir(folder, DATA, now=NOW).catalog["title"])


@pytest.mark.parametrize(
    "title",
    [
        "母".encode("gbk").decode("utf-8"),  # "ĸ": one GBK hanzi alone in its cell
        "母婴".encode("gbk").decode("utf-8"),  # "ĸӤ": Latin then Cyrillic
        "茅".encode("gbk").decode("utf-8"),  # "é" as a whole cell: no word of a text
        "Tee " + "母".encode("gbk").decode("utf-8"),  # "ĸ" is no one-letter word
    ],
)
def test_gbk_that_is_valid_utf8_still_asks(tmp_path: Path, title: str) -> None:
    folder = _write(tmp_path / "d", [title], "utf-8")
    with pytest.raises(DataContractError, match=r"catalog\.csv cannot be told apart"):
        validate_dir(folder, DATA, now=NOW)
    named = validate_dir(folder, DATA, now=NOW, encoding="catalog=gb18030").tables["catalog"]
    assert title.encode("utf-8").decode("gb18030") in set(named.clean["title"])
