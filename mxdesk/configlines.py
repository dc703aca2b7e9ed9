"""Where each key of a TOML file is written: the line numbers tomllib does not report."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path

from mxdesk.configread import Problem

KeyPath = tuple[str, ...]
# The byte order mark some editors (Notepad) put first: not TOML, and dropped, as on line 1
# it moves no line.
BOM = "\ufeff"
_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class _Unexpected(Exception):
    """Something the scanner does not understand: it stops there."""


class _Scanner:
    """Walks a TOML document that tomllib has already accepted, noting the line of each key:
    section headers, `key =` lines, dotted keys and the keys of inline tables."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.found: dict[KeyPath, int] = {}

    @property
    def line(self) -> int:
        return self.text.count("\n", 0, self.pos) + 1

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def skip(self, newlines: bool) -> None:
        """Skips blanks and comments (and line ends, when newlines)."""
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            elif c in " \t\r" or (newlines and c == "\n"):
                self.pos += 1
            else:
                return

    def note(self, path: KeyPath, line: int) -> None:
        for n in range(1, len(path) + 1):
            self.found.setdefault(path[:n], line)

    def document(self) -> None:
        table: KeyPath = ()
        while True:
            self.skip(newlines=True)
            if self.pos >= len(self.text):
                return
            if self.peek() == "[":
                line, double = self.line, self.peek(2) == "[["
                self.pos += 2 if double else 1
                table = self.key()
                self.skip(newlines=False)
                self.pos += 2 if double else 1
                self.note(table, line)
            else:
                self.pair(table)

    def pair(self, table: KeyPath | None) -> None:
        """key = value, noted under table (None: inside an array, where nothing is)."""
        line = self.line
        keys = self.key()
        path = None if table is None else (*table, *keys)
        if path is not None:
            self.note(path, line)
        self.skip(newlines=False)
        self.pos += 1  # "="
        self.skip(newlines=False)
        self.value(path)

    def key(self) -> KeyPath:
        parts = []
        while True:
            self.skip(newlines=False)
            c = self.peek()
            if c in ('"', "'"):
                parts.append(self.string_value())
            else:
                start = self.pos
                while self.pos < len(self.text) and self.text[self.pos] in _BARE:
                    self.pos += 1
                parts.append(self.text[start : self.pos])
            self.skip(newlines=False)
            if self.peek() != ".":
                return tuple(parts)
            self.pos += 1

    def string_value(self) -> str:
        """Reads a string token and returns its value (tomllib decodes the escapes)."""
        start = self.pos
        quote = self.peek()
        delimiter = quote * 3 if self.peek(3) == quote * 3 else quote
        self.pos += len(delimiter)
        while self.pos < len(self.text):
            if quote == '"' and self.peek() == "\\":
                self.pos += 2
            elif self.peek(len(delimiter)) == delimiter:
                self.pos += len(delimiter)
                # Up to two quotes right before a closing """ belong to the string.
                for _ in range(2 if len(delimiter) == 3 else 0):
                    if self.peek() == quote:
                        self.pos += 1
                break
            else:
                self.pos += 1
        value = tomllib.loads("k = " + self.text[start : self.pos])["k"]
        return value if isinstance(value, str) else ""

    def value(self, path: KeyPath | None) -> None:
        c = self.peek()
        if c in ('"', "'"):
            self.string_value()
        elif c == "{":
            self.items("}", lambda: self.pair(path), newlines=False)
        elif c == "[":
            # Items of an array have no key of their own: they are reported at the array's line.
            self.items("]", lambda: self.value(None), newlines=True)
        else:
            start = self.pos
            while self.pos < len(self.text) and self.text[self.pos] not in ",]}\n#":
                self.pos += 1
            if self.pos == start:
                raise _Unexpected(start)

    def items(self, close: str, item: Callable[[], None], newlines: bool) -> None:
        """The items of an inline table or an array, from its opening to close."""
        self.pos += 1
        self.skip(newlines)
        while self.peek() not in (close, ""):
            item()
            self.skip(newlines)
            if self.peek() == ",":
                self.pos += 1
                self.skip(newlines)
        self.pos += 1


def key_lines(text: str) -> dict[KeyPath, int]:
    """The 1-based line of every key and table of a valid TOML document, by its path; best
    effort: whatever is found before anything unexpected."""
    scanner = _Scanner(text)
    with contextlib.suppress(_Unexpected, tomllib.TOMLDecodeError, KeyError):
        scanner.document()
    return scanner.found


def line_of(lines: dict[KeyPath, int], key: str) -> int | None:
    """The line of a dotted key as errors name it ("gateway.listen"), else of the nearest
    table or key above it that is written in the file; None when nothing of it is."""
    wanted = key.lower()
    best: tuple[int, int] | None = None
    for path, line in lines.items():
        dotted = ".".join(path).lower()
        within = wanted == dotted or wanted.startswith(dotted + ".")
        if within and (best is None or len(dotted) > best[0]):
            best = (len(dotted), line)
    return best[1] if best else None


def locate(problems: Sequence[Problem], path: Path, text: str) -> list[Problem]:
    """The problems with the file they come from and the line of the key each names, in the
    order of the file."""
    lines = key_lines(text)
    found = [
        dataclasses.replace(p, file=path, line=line_of(lines, p.key) if p.key else p.line)
        for p in problems
    ]
    return sorted(found, key=lambda p: p.line or len(text))


def locate_in(source: Path | None, problems: Sequence[Problem]) -> list[Problem]:
    """The problems of a configuration read from source with their lines, as locate gives
    them; as they are when it was not read from a file or cannot be read again."""
    if source is None or not problems:
        return list(problems)
    try:
        text = source.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return list(problems)
    return locate(problems, source, text.removeprefix(BOM))


def toml_error(path: Path, error: tomllib.TOMLDecodeError) -> Problem:
    """tomllib's syntax error, its position moved from the message to the line."""
    text = str(error)
    found = re.search(r"\s*\(at line (\d+), column \d+\)|\s*\(at end of document\)", text)
    line = int(found[1]) if found and found[1] else None
    reason = text[: found.start()] if found else text
    return Problem("", f"not valid TOML: {reason}", path, line)
