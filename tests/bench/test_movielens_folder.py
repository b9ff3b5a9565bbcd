"""bench/experiments/movielens.py: RecBole's MovieLens 100K files become a data folder that the
data contract accepts row for row, from a wheel or from the unpacked folder."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd
import pytest

from bench.experiments import movielens
from pipelines.validate import validate_dir
from recsvc.settings import DataSettings

INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "196\t242\t3\t881250949\n"
    "186\t302\t5\t891717742\n"
    "196\t302\t4\t881251000\n"
    "22\t377\t1\t878887116\n"
)
# RecBole's titles are token sequences; a quote and a missing genre must not break the reading
ITEMS = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "242\tKolya\t1996\tComedy\n"
    '302\tL.A. Confidential "Special"\t1997\tCrime Film-Noir Mystery Thriller\n'
    "377\tHeavyweights\t1994\t\n"
)


def _folder(root: Path) -> Path:
    folder = root / "ml-100k"
    folder.mkdir()
    (folder / "ml-100k.inter").write_text(INTER)
    (folder / "ml-100k.item").write_text(ITEMS)
    return folder


def _wheel(root: Path) -> Path:
    wheel = root / "recbole-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(movielens.INNER + "ml-100k.inter", INTER)
        z.writestr(movielens.INNER + "ml-100k.item", ITEMS)
    return wheel


@pytest.mark.parametrize("source", [_folder, _wheel])
def test_every_rating_becomes_a_clean_event(tmp_path: Path, source: object) -> None:
    out = tmp_path / "data"
    counts = movielens.convert(source(tmp_path), out, "view")  # type: ignore[operator]
    assert counts == {"events": 4, "items": 3, "members": 3}
    result = validate_dir(out, DataSettings())
    assert result.rows_quarantined == 0, result.summary()
    assert {name: len(t.clean) for name, t in result.tables.items()} == {
        "catalog": 3,
        "members": 3,
        "events": 4,
    }
    events = pd.read_parquet(out / "events.parquet")
    assert set(events["event_type"]) == {"view"}
    assert events["ts"].min() == pd.Timestamp(878887116, unit="s", tz="UTC")
    catalog = pd.read_parquet(out / "catalog.parquet").set_index("item_id")
    assert catalog.loc["m302", "title"] == 'L.A. Confidential "Special" (1997)'
    assert catalog.loc["m302", "category"] == "Crime"
    assert catalog.loc["m377", "category"] == "unknown"


def test_positive_keeps_fours_and_fives_and_graded_maps_them(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    movielens.convert(folder, tmp_path / "pos", "positive")
    assert len(pd.read_parquet(tmp_path / "pos" / "events.parquet")) == 2
    movielens.convert(folder, tmp_path / "graded", "graded")
    graded = pd.read_parquet(tmp_path / "graded" / "events.parquet")
    assert sorted(graded["event_type"]) == ["click", "favorite", "view", "view"]


def test_a_source_without_movielens_is_a_named_error(tmp_path: Path) -> None:
    wheel = tmp_path / "other-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("other/__init__.py", "")
    with pytest.raises(SystemExit, match=r"cannot read .*ml-100k\.inter"):
        movielens.convert(wheel, tmp_path / "out", "view")
    with pytest.raises(SystemExit, match="give RecBole"):
        movielens.convert(tmp_path / "nothing-here", tmp_path / "out2", "view")
