"""The CLI's help texts reach the reader whole: rich reads ``[word]`` as markup and drops it
("needs recsvc[spark]" printed as "needs recsvc"), so brackets in help are escaped."""

from __future__ import annotations

import re
from typing import Any

import typer

from recsvc.cli import app

# "[spark]", "[training]": a tag rich would swallow. "\[spark]" is printed as "[spark]".
SWALLOWED = re.compile(r"(?<!\\)\[[A-Za-z_./]+\]")


def _texts(command: Any, path: str) -> list[tuple[str, str]]:
    out = [(path, command.help or "")]
    for param in getattr(command, "params", []):
        out.append((f"{path} {param.name}", getattr(param, "help", None) or ""))
    for name, sub in getattr(command, "commands", {}).items():
        out += _texts(sub, f"{path} {name}")
    return out


def test_no_help_text_loses_a_bracketed_word() -> None:
    texts = _texts(typer.main.get_command(app), "recsvc")
    assert len(texts) > 100  # every command and option was visited
    swallowed = [(where, SWALLOWED.findall(text)) for where, text in texts if SWALLOWED.search(text)]
    assert swallowed == []
