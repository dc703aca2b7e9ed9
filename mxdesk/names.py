"""Validation of names that come from people: DNS labels, slugs, e-mail addresses."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_LOCAL = re.compile(r"^[A-Za-z0-9!#$&'*+/=?^_`{|}~.-]{1,64}$")
MAX_ADDRESS = 254


class InvalidName(ValueError):
    """A name a person typed is not acceptable; the message says why and what to do."""


def builtin_reserved() -> frozenset[str]:
    text = resources.files("mxdesk").joinpath("reserved_labels.txt").read_text("utf-8")
    return frozenset(_lines(text))


def _lines(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip().lower()
        if line:
            out.append(line)
    return out


def reserved_labels(extra_file: Path | None) -> frozenset[str]:
    """The built-in reserved list plus the names in the configured file, one per line."""
    names = set(builtin_reserved())
    if extra_file is not None:
        names.update(_lines(extra_file.read_text("utf-8")))
    return frozenset(names)


def check_label(label: str, what: str, reserved: frozenset[str]) -> str:
    """The label in lower case (DNS names are case-insensitive, RFC 4343, like the addresses
    here) if it is an LDH DNS label that is not reserved; else InvalidName, with a suggestion
    only when the suggestion is itself acceptable."""
    label = label.strip().lower()
    if len(label) > 63:
        raise InvalidName(f"{what} {label!r} is {len(label)} characters long: at most 63")
    if not _LABEL.match(label):
        hint = _suggestion(label, reserved)
        raise InvalidName(
            f"{what} {label!r} is not a valid DNS label: use a-z, 0-9 and '-',"
            " not starting or ending with '-'" + (f" (e.g. {hint!r})" if hint else "")
        )
    if label.startswith("xn--") or (len(label) > 3 and label[2:4] == "--"):
        raise InvalidName(f"{what} {label!r} has '--' in positions 3-4, reserved for IDNA")
    if label in reserved:
        raise InvalidName(f"{what} {label!r} is reserved: choose another name")
    return label


def _suggestion(label: str, reserved: frozenset[str]) -> str | None:
    hint = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]+", "-", label)).strip("-")[:63].strip("-")
    try:
        return check_label(hint, "", reserved) if hint else None
    except InvalidName:
        return None


@dataclass(frozen=True)
class Address:
    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def parse_address(text: str) -> Address:
    """Splits and lowercases a plain mailbox address; raises InvalidName on anything else."""
    text = text.strip()
    if len(text) > MAX_ADDRESS or text.count("@") != 1:
        raise InvalidName(f"{text!r} is not an e-mail address like suporte@marca.example")
    local, domain = text.rsplit("@", 1)
    domain = domain.lower().rstrip(".")
    if not _LOCAL.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidName(f"{text!r}: the part before '@' has characters not allowed here")
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(p) for p in labels):
        raise InvalidName(f"{text!r}: {domain!r} is not a domain name")
    return Address(local.lower(), domain)
