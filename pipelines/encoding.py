"""Which text encoding a CSV file is in: given (``--encoding``) or detected by one documented rule.

The rule (docs/data.md, "Encodings"), applied to the whole file, never to a guess from a sample:

1. A byte-order mark decides: ``EF BB BF`` UTF-8, ``FF FE`` / ``FE FF`` UTF-16.
2. NUL bytes without a BOM: UTF-16 without a mark (or a binary file): stop, ask for ``--encoding``.
3. The whole file decodes as strict UTF-8: UTF-8, unless it is ambiguous (next point).
4. Ambiguous: every non-ASCII character the UTF-8 reading holds is a two-byte one (U+0080 to
   U+07FF: Latin-1, Greek, Cyrillic ...) and the file also decodes as GB18030. That is what GBK
   text looks like when read as UTF-8 (``母婴`` in GBK is the valid UTF-8 ``ĸӤ``). The UTF-8
   reading still wins when it reads as words (:func:`_reads_as_words`): every run of non-ASCII
   characters is letters of one script (or Latin-1 signs such as ``°`` ``£``), and a run of
   Latin letters sits inside a word (next to an ASCII letter, as in ``Café``, ``Müller``). GBK
   read as UTF-8 scatters over scripts (``ĸӤ``: Latin, then Cyrillic) and stands alone between
   separators, so it fails that. Otherwise the file stops with both readings shown and
   ``--encoding`` decides. A UTF-8 file with any character from U+0800 up (every CJK character)
   is not ambiguous: GBK bytes almost never form those.
5. Otherwise the whole file decodes as strict GB18030 (a superset of GBK and GB2312): GB18030.
6. Otherwise: stop, naming the file, the byte offset of the first byte that is not UTF-8, and the
   fix. Latin-1 is never tried: it accepts every byte, so it cannot tell text from mojibake.

A file given an encoding (``--encoding``) is decoded strictly in it; the first invalid byte stops
the file with the same kind of message. Nothing is ever decoded with replacement characters.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from recsvc.errors import DataContractError

AUTO = "auto"
# text codecs that do not read a file's bytes as its characters
_NOT_TEXT = {"punycode", "idna", "raw-unicode-escape", "unicode-escape", "undefined"}
_BLOCK = 16 * 1024 * 1024
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")  # type: ignore[return-value]


def _blocks(path: Path) -> Iterator[bytes]:
    with _open(path) as f:
        while block := f.read(_BLOCK):
            yield block


class _Scan:
    """A strict decode of the whole file: ok, first bad offset, and what the text held."""

    def __init__(self, path: Path, encoding: str) -> None:
        self.ok = True
        self.bad_offset = -1
        self.non_ascii = False
        self.max_char = "\x00"
        self.example = ""
        decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
        offset = 0
        try:
            for block in _blocks(path):
                try:
                    text = decoder.decode(block)
                except UnicodeDecodeError as exc:
                    self._fail(offset + exc.start)
                    return
                self._note(text)
                offset += len(block)
            self._note(decoder.decode(b"", final=True))
        except UnicodeDecodeError as exc:
            self._fail(offset + exc.start)
        except (OSError, EOFError) as exc:
            raise DataContractError(f"cannot read {path}: {exc}") from exc

    def _fail(self, offset: int) -> None:
        self.ok = False
        self.bad_offset = max(offset, 0)

    def _note(self, text: str) -> None:
        if text and not text.isascii():
            self.non_ascii = True
            self.max_char = max(self.max_char, max(text))
            if not self.example:
                at = next(i for i, c in enumerate(text) if ord(c) > 127)
                self.example = text[max(0, at - 10) : at + 20].replace("\n", " ")


_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


@functools.cache
def _script(c: str) -> str:
    """A letter's script (the first word of its Unicode name: LATIN, CYRILLIC, GREEK ...); "sign"
    for a Latin-1 sign or space (U+00A0 to U+00BF, × ÷); "" for anything else."""
    if unicodedata.category(c)[0] in "LM":
        return unicodedata.name(c, "").split(" ", 1)[0]
    return "sign" if "\u00a0" <= c <= "\u00bf" or c in "\u00d7\u00f7" else ""


def _reads_as_words(path: Path) -> bool:
    """Whether the UTF-8 reading of ``path`` (known to decode) reads as words (module docstring,
    point 4). Stops at the first run that does not."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    before = ""  # the previous block's last character: a run's left neighbour across blocks
    for block in [*_blocks(path), b""]:
        text = before + decoder.decode(block, final=not block)
        for run in _NON_ASCII.finditer(text):
            scripts = {_script(c) for c in run.group()} - {"sign"}
            if "" in scripts or len(scripts) > 1:
                return False
            if scripts == {"LATIN"}:
                left = text[run.start() - 1 : run.start()]
                right = text[run.end() : run.end() + 1]
                if not (left.isascii() and left.isalpha()) and not (right.isascii() and right.isalpha()):
                    return False
        before = text[-1:]
    return True


def _head(path: Path, n: int = 4096) -> bytes:
    try:
        with _open(path) as f:
            return f.read(n)
    except (OSError, EOFError) as exc:
        raise DataContractError(f"cannot read {path}: {exc}") from exc


def _fix(path: Path) -> str:
    return (
        f"convert it (e.g. iconv -f GBK -t UTF-8 {path.name} > utf8/{path.name}) or name its encoding "
        "with --encoding (gb18030, utf-16, utf-8, ...; docs/data.md, Encodings)"
    )


def resolve_encoding(path: Path, requested: str | None = None) -> str:
    """The Python codec to read ``path`` with. Raises DataContractError when the file is not
    valid text in the requested encoding, or when ``auto`` cannot tell (module docstring)."""
    requested = (requested or AUTO).strip().lower()
    if requested != AUTO:
        try:
            info = codecs.lookup(requested)
        except LookupError as exc:
            raise DataContractError(f"unknown --encoding {requested!r}; e.g. utf-8, gb18030, utf-16") from exc
        # rot13, base64, hex, zlib ... are codecs too, but not between bytes and text
        if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_TEXT:
            raise DataContractError(
                f"--encoding {requested!r} is not a text encoding; e.g. utf-8, gb18030, utf-16"
            )
        codec = info.name
        # A BOM in a UTF-8 file is skipped, never read into the first column's name.
        codec = "utf-8-sig" if codec == "utf-8" else codec
        scan = _Scan(path, codec)
        if not scan.ok:
            raise DataContractError(
                f"{path} is not valid {requested} text: the byte at offset {scan.bad_offset} cannot be "
                f"decoded; {_fix(path)}"
            )
        return codec
    head = _head(path)
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return resolve_encoding(path, codec)
    if head.count(b"\x00") > len(head) // 8:  # ASCII text in UTF-16: every other byte is NUL
        raise DataContractError(
            f"{path} holds NUL bytes without a byte-order mark: UTF-16 without a BOM, or not a text "
            "file; give --encoding utf-16-le (or utf-16-be), or export it as UTF-8"
        )
    utf8 = _Scan(path, "utf-8")
    if utf8.ok:
        if utf8.non_ascii and utf8.max_char < "\u0800":
            gb = _Scan(path, "gb18030")
            if gb.ok and not _reads_as_words(path):
                raise DataContractError(
                    f"{path} cannot be told apart: as UTF-8 it reads {utf8.example!r}, as GB18030/GBK "
                    f"{gb.example!r}. Give --encoding gb18030 or --encoding utf-8 (whichever reading is "
                    "right), or convert the file to UTF-8"
                )
        return "utf-8"
    gb = _Scan(path, "gb18030")
    if gb.ok:
        return "gb18030"
    raise DataContractError(
        f"{path} is neither UTF-8 (first invalid byte at offset {utf8.bad_offset}) nor GB18030/GBK "
        f"(first invalid byte at offset {gb.bad_offset}); {_fix(path)}"
    )
