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
   Latin letters sits inside a word (next to an ASCII letter, as in ``Café``, ``Müller``) or is
   a one-letter word next to a space (``à``, ``é``, ``è``, ``ò``: ``Pâte à tartiner``). One or
   two Latin letters inside an ASCII word settle it too: their GB18030 reading is one or two
   hanzi wedged between ASCII letters (``P芒te``), which Chinese text does not have. GBK read as
   UTF-8 scatters over scripts (``ĸӤ``: Latin, then Cyrillic) and stands alone between
   separators (``,ĸ,``), so it fails that. Otherwise the file stops with both readings shown and
   ``--encoding`` decides. A UTF-8 file with any character from U+0800 up (every CJK character)
   is not ambiguous: GBK bytes almost never form those.
5. Otherwise the readings left are scored: strict GB18030 (a superset of GBK and GB2312) and
   strict Windows-1252 (cp1252: Excel's "CSV" on Western Windows; it refuses the five bytes it
   leaves undefined). Both accept most byte pairs, so decoding alone cannot tell them apart
   (``CRÈME`` in cp1252 is the valid GB18030 ``CR萂E``); what the text reads as does
   (:class:`_Plausibility`). Each reading's share of non-ASCII bytes in plausible runs: for
   cp1252, Latin letters inside ASCII words (``Crème``, ``Größe``, ``créée``), a one-letter word
   (``à``) or a few signs (``€``, ``°``, ``«``, ``™``); for GB18030, runs of GB2312 characters (the
   6,763 common hanzi, full-width and CJK punctuation) or of three or more CJK characters, but
   not one or two characters wedged between ASCII letters, which is how an accent and the letter
   after it read (``FIANC蒃``). GBK read as cp1252 gives runs of signs and capitals standing
   apart (``»áÔ±``). The reading with the larger share wins when that share is at least 90 %
   (a tie goes to GB18030). A file only GB18030 decodes is GB18030, as before; one only cp1252
   decodes is cp1252 if it reads as text. When both decode and neither reads as text, the file
   stops with both readings shown and ``--encoding`` decides.
6. Otherwise: stop, naming the file, the byte offset of the first byte that is not UTF-8, and the
   fix. Latin-1 is never tried: it accepts every byte (C1 controls included), so it cannot tell
   text from mojibake; cp1252 is tried only with the plausibility score above.

A file given an encoding (``--encoding``) is decoded strictly in it; the first invalid byte stops
the file with the same kind of message, as does a missing byte-order mark for ``utf-16`` or
``utf-32`` (they read the byte order from it: ``utf-16-le`` and the like name it instead).
``--encoding`` names one codec for every CSV file, or one per table
(``catalog=cp1252,events=utf-8``; a table not named is detected). Nothing is ever decoded with
replacement characters. The chosen encoding and how it was decided are logged per
file, and ``summary.json`` and the report show it.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from pipelines.contract import TABLES
from recsvc.errors import DataContractError

log = logging.getLogger(__name__)

AUTO = "auto"
# Windows-1252: what Excel on Western Windows writes as "CSV" (docs/data.md, Encodings, rule 5)
CP1252 = "cp1252"
# A reading wins rule 5 only when at least this share of its non-ASCII bytes reads as text.
_PLAUSIBLE = 0.9
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

    def __init__(self, path: Path, encoding: str, score: _Plausibility | None = None) -> None:
        self.ok = True
        self.bad_offset = -1
        self.problem = ""  # why the decode failed, when the codec says more than "a bad byte"
        self.non_ascii = False
        self.max_char = "\x00"
        self.example = ""
        self.score = score
        decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
        offset = 0
        try:
            for block in _blocks(path):
                try:
                    text = decoder.decode(block)
                except UnicodeError as exc:
                    self._fail(offset, exc)
                    return
                self._note(text)
                offset += len(block)
            self._note(decoder.decode(b"", final=True))
            if score is not None:
                score.feed("", final=True)
        # UnicodeError, not only UnicodeDecodeError: the utf-16 and utf-32 codecs raise the plain
        # UnicodeError ("UTF-16 stream does not start with BOM") for a file without a byte-order
        # mark, and that is as much "not text in this encoding" as a bad byte is.
        except UnicodeError as exc:
            self._fail(offset, exc)
        except (OSError, EOFError) as exc:
            raise DataContractError(f"cannot read {path}: {exc}") from exc

    def _fail(self, offset: int, exc: UnicodeError) -> None:
        self.ok = False
        if isinstance(exc, UnicodeDecodeError):
            self.bad_offset = max(offset + exc.start, 0)
        else:  # no position given: the stream as a whole is refused from where decoding stood
            self.bad_offset = offset
            self.problem = str(exc)

    def _note(self, text: str) -> None:
        if self.score is not None:
            self.score.feed(text)
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


# Accented vowels that are words on their own in French, Portuguese, Italian, Spanish (à, é, è, ò, ó)
_ONE_LETTER_WORDS = frozenset("àáèéòóùÀÁÈÉÒÓÙ")


def _reads_as_words(path: Path) -> bool:
    """Whether the UTF-8 reading of ``path`` (known to decode) reads as words (module docstring,
    point 4): every run of non-ASCII characters does, or one of them is one or two Latin letters
    inside an ASCII word (``Pâte``), whose GB18030 reading (``P芒te``) no Chinese text has."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    before = ""  # the previous block's last character: a run's left neighbour across blocks
    words = True
    for block in [*_blocks(path), b""]:
        text = before + decoder.decode(block, final=not block)
        for run in _NON_ASCII.finditer(text):
            scripts = {_script(c) for c in run.group()} - {"sign"}
            if "" in scripts or len(scripts) > 1:
                words = False
                continue
            if scripts == {"LATIN"}:
                left = text[run.start() - 1 : run.start()]
                right = text[run.end() : run.end() + 1]
                in_word = (left.isascii() and left.isalpha(), right.isascii() and right.isalpha())
                if all(in_word) and len(run.group()) <= 2:
                    return True
                if not any(in_word) and not _one_letter_word(run.group(), left, right):
                    words = False
        before = text[-1:]
    return words


def _one_letter_word(run: str, left: str, right: str) -> bool:
    """A Latin run standing apart from ASCII letters that is a one-letter word of a text (``à`` in
    ``Pâte à tartiner``, ``è`` in ``Caffè è pronto``; signs such as ``«`` may stand by it): a space
    on one side at least, so not a whole cell on its own, as one GBK character reads (``,ĸ,``)."""
    letters = [c for c in run if _script(c) != "sign"]
    return len(letters) == 1 and letters[0] in _ONE_LETTER_WORDS and " " in (left, right)


# A run of non-ASCII characters with the ASCII letter before and after it, if any.
_RUN = re.compile(r"([A-Za-z]?)([^\x00-\x7f]+)(?=([A-Za-z]?))")
# cp1252's signs: what bytes 0x80 to 0xBF decode to that is no letter (€ ‚ „ … – — ™ ° « ...), × ÷.
_CP1252_SIGNS = frozenset(
    c
    for c in bytes(range(0x80, 0xC0)).decode(CP1252, errors="ignore") + "\u00d7\u00f7"
    if unicodedata.category(c)[0] != "L"
)


class _Plausibility:
    """How much of one reading of a file reads as text: the share of its non-ASCII bytes that
    are in runs ``judge(run, letter_before, letter_after)`` accepts (module docstring, rule 5).
    Fed the decoded text block by block; a block's last, unfinished line waits for the next one,
    so no run is split. Distinct runs are judged once (a file repeats its words)."""

    def __init__(self, encoding: str, judge: Callable[[str, bool, bool], bool]) -> None:
        self.encoding = encoding
        self.judge = judge
        self.runs: Counter[tuple[str, str, str]] = Counter()
        self.pending = ""

    def feed(self, text: str, final: bool = False) -> None:
        text = self.pending + text
        cut = len(text) if final else text.rfind("\n") + 1
        if not final and cut == 0 and len(text) > _BLOCK:
            cut = len(text)  # a "line" longer than a block is no CSV line: judge it in parts
        self.pending = text[cut:]
        if cut and not text[:cut].isascii():
            self.runs.update(_RUN.findall(text, 0, cut))

    @property
    def share(self) -> float:
        total = plausible = 0
        for (before, run, after), n in self.runs.items():
            weight = n * len(run.encode(self.encoding))
            total += weight
            if self.judge(run, bool(before), bool(after)):
                plausible += weight
        return plausible / total if total else 1.0


def _latin_word(run: str, before: bool, after: bool) -> bool:
    """A cp1252 run that reads as Western text: accented letters inside an ASCII word, in one
    case (``CRÈME``, ``Größe``, ``créée``; not ``Ðô``), a one-letter word (``à``), or a few signs
    (``€``, ``°``, ``«``). GBK read as cp1252 is pairs of signs and letters standing apart."""
    letters = "".join(c for c in run if c not in _CP1252_SIGNS)
    if not letters:
        return len(run) <= 2
    if any(_script(c) != "LATIN" for c in letters) or len(letters) > 3:
        return False
    if not (letters.isupper() or letters.islower() or letters.istitle()):
        return False
    return before or after or len(run) == 1


@functools.cache
def _gb2312(c: str) -> bool:
    """Whether GBK writes ``c`` in the GB2312 area (both bytes from A1: common hanzi, CJK and
    full-width punctuation, ``·``); by bytes, since Python's gb2312 codec maps some of them
    (A1A4 ``·``) to other characters than its gbk codec does."""
    b = c.encode("gb18030")
    return len(b) == 2 and 0xA1 <= b[0] <= 0xF7 and b[1] >= 0xA1


def _chinese_run(run: str, before: bool, after: bool) -> bool:
    """A GB18030 run that reads as Chinese: GB2312 characters (the common hanzi, full-width and
    CJK punctuation), or three or more CJK characters; never one or two wedged between ASCII
    letters (``CR萂E``: cp1252's accent and the letter after it read as one rare hanzi)."""
    if len(run) <= 2 and before and after:
        return False
    if all(_gb2312(c) for c in run):
        return True
    return len(run) >= 3 and all(unicodedata.name(c, "").startswith("CJK") for c in run)


def _head(path: Path, n: int = 4096) -> bytes:
    try:
        with _open(path) as f:
            return f.read(n)
    except (OSError, EOFError) as exc:
        raise DataContractError(f"cannot read {path}: {exc}") from exc


def _fix(path: Path) -> str:
    return (
        f"convert it (e.g. iconv -f GBK -t UTF-8 {path.name} > utf8/{path.name}) or name its encoding "
        "with --encoding (gb18030, cp1252, utf-16, utf-8, ...; docs/data.md, Encodings)"
    )


def _fix_named(path: Path, codec: str) -> str:
    """The fix for a file the named codec refuses as a whole: ``utf-16`` and ``utf-32`` read the
    byte order from a byte-order mark, so a file without one needs its byte order named."""
    if codec in ("utf-16", "utf-32"):
        return (
            f"if it is {codec.upper()} without a byte-order mark, give --encoding {codec}-le or "
            f"--encoding {codec}-be; otherwise name the encoding it is in (docs/data.md, Encodings)"
        )
    return _fix(path)


def resolve_encoding(path: Path, requested: str | None = None) -> str:
    """The Python codec to read ``path`` with. Raises DataContractError when the file is not
    valid text in the requested encoding, or when ``auto`` cannot tell (module docstring)."""
    requested = _requested_for(path, requested)
    if requested != AUTO:
        return _chosen(path, _strict(path, requested), "named with --encoding")
    head = _head(path)
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return _chosen(path, _strict(path, codec), "byte-order mark")
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
        return _chosen(path, "utf-8", "the whole file is UTF-8")
    return _guess(path, utf8)


def _strict(path: Path, requested: str) -> str:
    """The codec ``requested`` names, checked against every byte of ``path``."""
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
    if not scan.ok and scan.problem:
        raise DataContractError(
            f"{path} is not valid {requested} text: {scan.problem} (at offset {scan.bad_offset}); "
            f"{_fix_named(path, codec)}"
        )
    if not scan.ok:
        raise DataContractError(
            f"{path} is not valid {requested} text: the byte at offset {scan.bad_offset} cannot be "
            f"decoded; {_fix(path)}"
        )
    return codec


def _guess(path: Path, utf8: _Scan) -> str:
    """Rule 5 and 6 (module docstring): GB18030 or cp1252, by what each reading reads as."""
    gb = _Scan(path, "gb18030", _Plausibility("gb18030", _chinese_run))
    latin = _Scan(path, CP1252, _Plausibility(CP1252, _latin_word))
    gb_share = gb.score.share if gb.ok and gb.score else 0.0
    latin_share = latin.score.share if latin.ok and latin.score else 0.0
    shares = f"non-ASCII text that reads as text: GB18030 {gb_share:.0%}, Windows-1252 {latin_share:.0%}"
    if latin.ok and latin_share >= _PLAUSIBLE and (not gb.ok or latin_share > gb_share):
        return _chosen(path, CP1252, f"{shares}; it reads {latin.example!r}", guessed=True)
    if gb.ok and (not latin.ok or gb_share >= max(latin_share, _PLAUSIBLE)):
        return _chosen(path, "gb18030", f"{shares}; it reads {gb.example!r}", guessed=True)
    if gb.ok:
        raise DataContractError(
            f"{path} cannot be told apart: as GB18030/GBK it reads {gb.example!r}, as Windows-1252 "
            f"{latin.example!r} (neither reads as text; {shares}). Give --encoding gb18030 or "
            "--encoding cp1252 (whichever reading is right; --encoding catalog=cp1252 names one "
            "file's), or convert the file to UTF-8"
        )
    latin_note = f", nor Windows-1252 text ({shares})" if latin.ok else ""
    raise DataContractError(
        f"{path} is neither UTF-8 (first invalid byte at offset {utf8.bad_offset}) nor GB18030/GBK "
        f"(first invalid byte at offset {gb.bad_offset}){latin_note}; {_fix(path)}"
    )


def _chosen(path: Path, codec: str, why: str, *, guessed: bool = False) -> str:
    """``codec``, logged with how it was decided, so the terminal shows every file's encoding; a
    guess shows what the text then reads as, so a wrong one is seen at once."""
    hint = "; if that is not the text, give --encoding (docs/data.md, Encodings)" if guessed else ""
    log.info("encoding file=%s encoding=%s (%s)%s", path.name, codec, why, hint)
    return codec


_TABLE_NAMES = tuple(spec.name for spec in TABLES)


def _requested_for(path: Path, requested: str | None) -> str:
    """The encoding ``--encoding`` names for ``path``: one codec for every file (``gb18030``), or
    one per table (``catalog=cp1252,events=utf-8``; a table it does not name is detected)."""
    requested = (requested or AUTO).strip().lower()
    if "=" not in requested:
        return requested
    named: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in requested.split(","))):
        table, _, codec = (x.strip() for x in part.partition("="))
        if table not in _TABLE_NAMES or not codec:
            raise DataContractError(
                f"--encoding {requested!r}: {part!r} is not TABLE=CODEC with TABLE one of "
                f"{', '.join(_TABLE_NAMES)} (e.g. --encoding catalog=cp1252,events=utf-8)"
            )
        named[table] = codec
    return named.get(path.name.split(".", 1)[0], AUTO)
