"""Printing results: an aligned table on a terminal, JSON with --json; errors as one line."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from mxdesk.timefmt import timestamp

F = TypeVar("F", bound=Callable[..., Any])


# Fields that hold seconds since the epoch: JSON gives them as ISO 8601 in UTC, like tickets.
TIME_FIELDS = frozenset(
    {"created", "updated", "activated", "checked", "next_attempt", "next_action", "time", "at"}
)


# Values JSON takes as they are: most of a listing, passed over without a call per value.
_AS_IS = frozenset({str, int, float, bool, type(None)})


def _field(key: str, value: Any) -> Any:
    if key in TIME_FIELDS and isinstance(value, (int, float)) and not isinstance(value, bool):
        return timestamp(value)
    return _plain(value)


def _plain(value: Any) -> Any:
    if type(value) in _AS_IS:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {
            k: v if type(v) in _AS_IS and k not in TIME_FIELDS else _field(k, v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def emit_json(value: Any) -> None:
    click.echo(json.dumps(_plain(value), indent=2, ensure_ascii=False, default=str))


def emit_table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> None:
    text = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in text
    ]
    click.echo("\n".join(lines))  # one write: a thousand echo calls cost a person 20 ms


def fail(message: str, code: int = 1) -> None:
    click.echo(f"mxdesk: {message}", err=True)
    sys.exit(code)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)


def errors_to_exit(*kinds: type[Exception]) -> Callable[[F], F]:
    """Turns the listed library errors into one line on stderr and exit code 1. A file the
    user may not open and a closed stdout are left to the `mxdesk` group, which says them the
    same way for every command (OSError covers both)."""

    def decorate(f: F) -> F:
        @wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return f(*args, **kwargs)
            except (PermissionError, BrokenPipeError):
                raise
            except kinds as exc:
                fail(str(exc))

        return wrapper  # type: ignore[return-value]

    return decorate


def emit_steps(steps: Sequence[Any], as_json: bool) -> None:
    """The steps of a connection test (each with .step, .ok, .reply), one line each; exit 1
    when one failed."""
    if as_json:
        emit_json(steps)
    else:
        for step in steps:
            click.echo(f"{'ok  ' if step.ok else 'FAIL'}  {step.step}: {step.reply}")
    if not all(s.ok for s in steps):
        sys.exit(1)


def read_password(from_stdin: bool, error: type[Exception]) -> str:
    """The first line of stdin, or asked for twice without echo on the terminal; raises error
    when there is neither. There is never an option that takes a password on the command line:
    arguments are visible to every user of the machine."""
    if from_stdin:
        line = sys.stdin.readline().rstrip("\n").rstrip("\r")
        if not line:
            raise error("no password on stdin: give it as the first line")
        return line
    if not sys.stdin.isatty():
        # getpass would read the terminal anyway, or warn and echo: neither is wanted here.
        raise error("no terminal to ask for the password on: use --password-stdin")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))
