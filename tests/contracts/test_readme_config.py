"""The README's configuration table is what a new user reads first: every variable it names must
exist in the settings, and every default it states must be the settings' default."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from recsvc.settings import Settings, project_home

README = Path(__file__).resolve().parents[2] / "README.md"
_NAME = re.compile(r"`(RECSVC_[A-Z0-9_]+?__[A-Z0-9_]+|__[A-Z0-9_]+)`")
# Defaults written as words rather than values; the settings' default must be of that kind.
_WORDS: dict[str, tuple[Any, ...]] = {"unset": (None, "", [], {}), "shipped default": (None,)}


def _rows() -> list[tuple[list[tuple[str, str]], str]]:
    """(section, field) pairs and the default cell of each row of the table whose header is
    ``| variable | default | meaning |``."""
    rows: list[tuple[list[tuple[str, str]], str]] = []
    in_table = False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("| variable | default |"):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            break
        if not in_table or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        names: list[tuple[str, str]] = []
        section = ""
        for token in _NAME.findall(cells[0]):
            if token.startswith("RECSVC_"):
                section, field = token.removeprefix("RECSVC_").split("__", 1)
            else:
                field = token.removeprefix("__")
            names.append((section.lower(), field.lower()))
        rows.append((names, cells[1]))
    return rows


def _matches(cell: str, value: Any) -> bool:
    cell = re.sub(r"\s*\(.*\)$", "", cell.replace("`", "")).strip()
    cell = cell.replace("<home>", str(project_home()))  # the documented home folder, resolved
    if cell in _WORDS:
        return value in _WORDS[cell]
    if isinstance(value, bool):
        return cell == str(value).lower()
    if isinstance(value, int | float):
        return float(cell) == float(value)
    if isinstance(value, dict):
        # "purchase 4 … view 0.5": each named pair must hold
        pairs = re.findall(r"([a-z_]+) ([0-9.]+)", cell)
        return bool(pairs) and all(float(value.get(k, "nan")) == float(v) for k, v in pairs)
    if isinstance(value, list | tuple):
        # "[]", or the names in order: "mini_program, app, …"
        return list(value) == ([] if cell == "[]" else [v.strip() for v in cell.split(",")])
    return cell == str(value)


ROWS = _rows()


def test_the_table_is_found() -> None:
    assert len(ROWS) >= 20


@pytest.mark.parametrize(("names", "cell"), ROWS, ids=[",".join(f for _, f in n) for n, _ in ROWS])
def test_each_documented_default_is_the_settings_default(names: list[tuple[str, str]], cell: str) -> None:
    settings = Settings()
    values = []
    for section, field in names:
        assert hasattr(settings, section), f"README names unknown section {section!r}"
        assert field in type(getattr(settings, section)).model_fields, (
            f"README names {section}.{field}, which the settings do not have"
        )
        values.append(getattr(getattr(settings, section), field))
    parts = [p.strip() for p in cell.split(" / ")] if len(names) > 1 else [cell]
    if len(parts) != len(values):
        parts = [cell] * len(values)  # one default shared by every name of the row ("unset")
    for (section, field), part, value in zip(names, parts, values, strict=True):
        assert _matches(part, value), f"README says {section}.{field} defaults to {part!r}; it is {value!r}"


def test_a_wrong_default_is_caught() -> None:
    assert not _matches("64", 32)
    assert not _matches("purchase 4 … view 0.5", {"purchase": 2.0, "view": 0.5})
    assert _matches("0 (off)", 0)
    assert _matches("app, live", ("app", "live")) and not _matches("app, live", ("live", "app"))
