"""IMAP folder names in modified UTF-7 (RFC 3501 §5.1.3): "Suporte/Ação" is "Suporte/A&AOcA4w-o"."""

from __future__ import annotations

import base64
import binascii


def _printable(char: str) -> bool:
    return 0x20 <= ord(char) <= 0x7E


def encode(name: str) -> str:
    """The name as the server knows it: printable ASCII stands for itself ("&" as "&-"), every
    run of other characters is UTF-16BE in base64 with "," for "/" and no padding, in "&…-"."""
    out: list[str] = []
    run: list[str] = []

    def shift() -> None:
        if run:
            data = "".join(run).encode("utf-16-be")
            b64 = base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",")
            out.append(f"&{b64}-")
            run.clear()

    for char in name:
        if _printable(char):
            shift()
            out.append("&-" if char == "&" else char)
        else:
            run.append(char)
    shift()
    return "".join(out)


def decode(name: str) -> str:
    """The Unicode name of a folder name sent by the server; ValueError if it is not modified
    UTF-7 (a character outside printable ASCII, an unterminated or malformed "&…-")."""
    out: list[str] = []
    i = 0
    while i < len(name):
        char = name[i]
        if not _printable(char):
            raise ValueError(f"folder name {name!r}: {char!r} is not printable ASCII")
        if char != "&":
            out.append(char)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise ValueError(f"folder name {name!r}: '&' at {i} has no closing '-'")
        chunk = name[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            try:
                if "/" in chunk or "=" in chunk:
                    raise binascii.Error("'/' or '=' in modified base64")
                data = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
                out.append(data.decode("utf-16-be"))
            except (binascii.Error, UnicodeDecodeError) as e:
                raise ValueError(f"folder name {name!r}: bad encoded run {chunk!r}") from e
        i = end + 1
    return "".join(out)
