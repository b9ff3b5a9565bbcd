from __future__ import annotations

import numpy as np

from recsvc.idmap import IdMap


def test_rows_round_trip_and_unknown() -> None:
    m = IdMap.from_values(["m3", "m1", "m2", "m1"])
    assert len(m) == 3
    assert m.ids(range(3)) == ["m1", "m2", "m3"]
    assert m.row("m2") == 1
    assert m.row("zz") is None
    assert m.row("") is None
    assert m.row("m2-but-much-longer-than-width") is None
    assert m.row("é") is None
    assert m.rows(["m3", "nope", "m1"]).tolist() == [2, -1, 0]


def test_save_load_mmap(tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = IdMap.from_values([f"item{i}" for i in range(100)])
    m.save(tmp_path / "ids.npy")
    loaded = IdMap.load(tmp_path / "ids.npy")
    assert isinstance(loaded.array.base, np.memmap)  # a view over a memory map
    assert loaded.row("item42") == m.row("item42")


def test_empty() -> None:
    m = IdMap.from_values([])
    assert len(m) == 0
    assert m.row("x") is None
    assert m.rows(["x"]).tolist() == [-1]
