"""Every refusal a caller can get starts with a stable reason code (docs/api.md, "Errors"): an
``InvalidArgument`` raised anywhere in the service names its own, never the generic
INVALID_ARGUMENT. Read from the source, so a new check without a reason fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import recsvc
from recsvc.errors import MAX_DETAILS, InvalidArgument, status_details

ROOT = Path(recsvc.__file__).parent


def test_every_invalid_argument_in_the_service_names_its_reason() -> None:
    unnamed = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.parent.name in ("v1", "cli"):  # generated stubs; the CLI prints to a person
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "InvalidArgument"
                and not any(k.arg == "reason" for k in node.keywords)
            ):
                unnamed.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not unnamed, unnamed


def test_a_long_message_is_cut_for_the_status_header() -> None:
    short = InvalidArgument("bad value 'x'", reason="INVALID_X")
    assert status_details(short) == "INVALID_X: bad value 'x'"
    long = InvalidArgument("bad value " + "品" * 20_000, reason="INVALID_X")
    cut = status_details(long)
    assert len(cut) <= MAX_DETAILS and cut.startswith("INVALID_X: bad value 品")
    assert cut.endswith(f"({len(str(long)) - MAX_DETAILS + 40} more characters)")
