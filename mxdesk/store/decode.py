"""Turning bytes from outside into text: charsets, encoded-word headers and file names."""

from __future__ import annotations

import codecs
import re
import unicodedata

MAX_CHARSET_NAME = 40
MAX_FILENAME = 200
MAX_SUFFIX = 16
# Codecs Python knows that are not character sets a mail could honestly declare.
_NOT_CHARSETS = frozenset(
    {"idna", "punycode", "unicode-escape", "raw-unicode-escape", "mbcs", "oem", "undefined"}
)
# Labels that in practice carry Windows-1252 (as in the WHATWG Encoding Standard): curly quotes
# and the euro sign are common in mail declared as ISO-8859-1.
_AS_CP1252 = frozenset({"iso8859-1", "cp1252"})


def _codec(charset: str | None) -> str | None:
    """The Python codec for a declared charset, or None when unknown, absent or not text."""
    if not charset or len(charset) > MAX_CHARSET_NAME:
        return None
    try:
        info = codecs.lookup(charset.strip().strip('"').lower())
    except (LookupError, ValueError):
        return None
    if info.name in _NOT_CHARSETS or not getattr(info, "_is_text_encoding", True):
        return None
    return "cp1252" if info.name in _AS_CP1252 else info.name


def _guess(data: bytes) -> str:
    for codec in ("utf-8", "cp1252"):
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def decode_text(data: bytes, charset: str | None) -> tuple[str, str | None]:
    """Text from bytes in a declared charset, and a defect note when the bytes did not fit it.

    An unknown or missing charset is guessed: UTF-8 when the bytes are valid UTF-8, else
    Windows-1252, else Latin-1 (which accepts any byte).
    """
    codec = _codec(charset)
    label = (charset or "")[:MAX_CHARSET_NAME]
    if codec is None or codec == "ascii":
        # 8-bit text labelled us-ascii is common; a guess beats replacement characters.
        unknown = codec is None and bool(charset)
        return _guess(data), f"unknown charset {label!r}" if unknown else None
    try:
        return data.decode(codec), None
    except UnicodeDecodeError:
        pass
    if codec == "cp1252":
        # The five bytes Windows-1252 leaves undefined are still valid ISO-8859-1.
        return data.decode("latin-1"), None
    try:
        return data.decode("utf-8"), f"text declared {label!r} is UTF-8"
    except UnicodeDecodeError:
        return data.decode(codec, "replace"), f"invalid bytes for charset {label!r}"


def raw_header_text(value: str) -> str:
    """Recovers 8-bit header bytes the parser kept as surrogate escapes (UTF-8, else cp1252)."""
    if value.isascii() or not any("\udc80" <= c <= "\udcff" for c in value):
        return value
    return _guess(value.encode("utf-8", "surrogateescape"))


def decode_header_value(value: str) -> str:
    """A header's text with RFC 2047 encoded words decoded, in any charset, never raising."""
    from email.header import decode_header  # here: `ticket list` needs none of email

    value = raw_header_text(value)
    if "=?" not in value:  # no encoded word: decode_header would return it as it is
        return _unfold(value)
    try:
        chunks = decode_header(value)
    except Exception:  # a malformed encoded word must not lose the header
        return _unfold(value)
    out = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
        elif charset is None:
            out.append(_unescape(chunk))
        else:
            out.append(decode_text(chunk, charset)[0])
    return _unfold("".join(out))


def _unescape(chunk: bytes) -> str:
    # decode_header returns the text between encoded words as raw-unicode-escape bytes.
    try:
        return chunk.decode("raw-unicode-escape")
    except UnicodeDecodeError:
        return chunk.decode("latin-1")


def _unfold(text: str) -> str:
    return " ".join(without_controls(text).split())


_NOT_PLAIN = re.compile(r"[^\t\n\x20-\x7e]")


def _keep(match: re.Match[str]) -> str:
    c = match.group()
    return "" if unicodedata.category(c) in ("Cc", "Cf", "Cs") else c


def without_controls(text: str) -> str:
    """Drops control and format characters (NUL, CR, bidi overrides …), keeping tab and newline."""
    # Only characters outside printable ASCII need a look at their Unicode category.
    return _NOT_PLAIN.sub(_keep, text)


def safe_filename(name: str | None, fallback: str) -> str:
    """A file name safe to show and to save: no directories, controls or leading dots, bounded."""
    text = unicodedata.normalize("NFC", without_controls(name or "").replace("\t", " "))
    text = text.replace("\n", " ").replace("\\", "/").split("/")[-1]
    text = " ".join(text.split()).lstrip(".").strip()
    if len(text) > MAX_FILENAME:
        stem, dot, suffix = text.rpartition(".")
        if dot and stem and 0 < len(suffix) <= MAX_SUFFIX:
            text = stem[: MAX_FILENAME - len(suffix) - 1] + "." + suffix
        else:
            text = text[:MAX_FILENAME]
    return text or fallback
