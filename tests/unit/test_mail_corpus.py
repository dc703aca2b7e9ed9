"""Real-world and malformed mail filed through a real store; the results kept in a golden file.

Each message of tests/data/mail (see its README for where they come from) and each generated
one below is parsed and filed in a fresh tickets.db: it must be stored, with its raw bytes and
its defects, exactly as tests/data/mail_corpus.golden.json says. After a deliberate change,
`.venv/bin/python tests/unit/test_mail_corpus.py` rewrites the golden file; review its diff
before committing it.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mxdesk.state import Mailbox
from mxdesk.store import parse, queries
from mxdesk.store.db import open_readonly, open_tickets
from mxdesk.store.parse import (
    MAX_ADDRESSES,
    MAX_NESTING,
    MAX_SUBJECT,
    parse_message,
)
from mxdesk.store.tickets import TicketStore

DATA = Path(__file__).resolve().parents[1] / "data"
CORPUS = DATA / "mail"
GOLDEN = DATA / "mail_corpus.golden.json"
NOT_MAIL = {"README.md", "LICENSE", ".gitattributes"}
SUPORTE = Mailbox("suporte@marca.example", "marca", "Suporte Marca", False, True, 0.0)


def nested_multiparts(levels: int) -> bytes:
    opening = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(levels)
    )
    closing = b"".join(b"\r\n--b%d--" % i for i in reversed(range(levels)))
    head = b"From: a@example.com\r\nSubject: %d nested multiparts\r\n" % levels
    return head + opening + b"Content-Type: text/plain\r\n\r\ndeep" + closing + b"\r\n"


def parts(count: int, content_type: Callable[[int], bytes]) -> bytes:
    body = b"".join(
        b"--b\r\nContent-Type: " + content_type(i) + b"\r\n\r\nx%d\r\n" % i for i in range(count)
    )
    head = b"From: a@example.com\r\nSubject: %d parts\r\n" % count
    return head + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + body + b"--b--\r\n"


def addresses(n: int) -> bytes:
    to = b", ".join(b'"P %d" <p%d@example.com>' % (i, i) for i in range(n))
    return b"From: a@example.com\r\nTo: " + to + b"\r\nSubject: many\r\n\r\nbody\r\n"


def encoded_words(n: int) -> bytes:
    words = b" ".join(b"=?utf-8?q?=C3=A7%d?=" % i for i in range(n))
    return b"From: a@example.com\r\nSubject: " + words + b"\r\n\r\nbody\r\n"


def encoded_file_name(n: int) -> bytes:
    words = b" ".join(b"=?utf-8?q?=C3=A7%d?=" % i for i in range(n))
    part = b'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="'
    return parts(1, lambda i: b"text/plain").replace(
        b"Content-Type: text/plain", part + words + b'"'
    )


# Too big, or too regular, to keep as files.
GENERATED: dict[str, Callable[[], bytes]] = {
    "header-line-1mb": lambda: (
        b"From: a@example.com\r\nSubject: " + b"x" * 1_000_000 + b"\r\n\r\nbody\r\n"
    ),
    "body-line-1mb": lambda: b"From: a@example.com\r\n\r\n" + b"y" * 1_000_000,
    "to-100000-addresses": lambda: addresses(100_000),
    "subject-100000-encoded-words": lambda: encoded_words(100_000),
    "file-name-10000-encoded-words": lambda: encoded_file_name(10_000),
    f"multipart-nested-{MAX_NESTING}": lambda: nested_multiparts(MAX_NESTING),
    f"multipart-nested-{MAX_NESTING + 1}": lambda: nested_multiparts(MAX_NESTING + 1),
    "multipart-nested-100": lambda: nested_multiparts(100),
    "rfc822-nested-2000": lambda: (
        b"From: a@example.com\r\nContent-Type: message/rfc822\r\n\r\n" * 2000 + b"\r\nleaf\r\n"
    ),
    "parts-1000": lambda: parts(1000, lambda i: b"application/x-%d" % i),
    "content-type-64k-semicolons": lambda: parts(1, lambda i: b"text/plain" + b";" * 65536),
}


def corpus() -> dict[str, Callable[[], bytes]]:
    found: dict[str, Callable[[], bytes]] = {
        path.relative_to(CORPUS).as_posix(): path.read_bytes
        for path in sorted(CORPUS.rglob("*"))
        if path.is_file() and path.name not in NOT_MAIL
    }
    found.update({f"generated/{name}": make for name, make in GENERATED.items()})
    return found


MESSAGES = corpus()


def file_one(raw: bytes, where: Path) -> dict[str, Any]:
    """Files raw in a new tickets.db under where; what was stored, as the golden file has it."""
    where.mkdir(parents=True, exist_ok=True)
    path = where / "tickets.db"
    store = TicketStore(open_tickets(path), clock=lambda: 1_700_000_000.0)
    try:
        (filed,) = store.file_all(raw, "sender@example.net", [SUPORTE])
    finally:
        store.close()
    if filed is None:
        return {"refused": "not filed: a temporary error (see the log)"}
    db = open_readonly(path)
    try:
        (message,) = queries.get_ticket(db, filed.ticket).messages
        (stored,) = db.query("SELECT raw FROM messages WHERE id = ?", [message.id])
    finally:
        db.close()
    assert bytes(stored["raw"]) == raw, "the raw message must be kept byte for byte"
    return {
        "subject": message.subject,
        "from": message.from_addr,
        "attachments": len(message.attachments),
        "defects": message.defects,
    }


def golden() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(GOLDEN.read_text("utf-8"))
    return loaded


@pytest.mark.parametrize("name", list(MESSAGES))
def test_each_message_is_stored_as_the_golden_file_says(name: str, tmp_path: Path) -> None:
    raw = MESSAGES[name]()
    assert parse_message(raw) == parse_message(raw), "parsing must be deterministic"
    result = file_one(raw, tmp_path)
    assert "refused" not in result, "the store has no reason to refuse a message for its content"
    assert result == golden().get(name)


def test_the_golden_file_names_every_message_and_no_other() -> None:
    assert sorted(golden()) == sorted(MESSAGES)


# -- bounds the corpus relies on ----------------------------------------------------------------


def test_the_cve_2023_27043_forms_give_no_sender() -> None:
    for name in ("cve-2023-27043-angle.eml", "cve-2023-27043-paren.eml"):
        parsed = parse_message((CORPUS / "mxdesk" / name).read_bytes())
        assert parsed.from_addr == "", name
        assert "message: From: no valid address" in parsed.defects


def test_nesting_at_the_bound_is_parsed_and_beyond_it_kept_as_text() -> None:
    at_bound = parse_message(nested_multiparts(MAX_NESTING))
    beyond = parse_message(nested_multiparts(MAX_NESTING + 1))
    assert not any("kept as text" in d for d in at_bound.defects)
    assert beyond.defects == (f"message: MIME nesting deeper than {MAX_NESTING}; kept as text",)
    assert beyond.subject == f"{MAX_NESTING + 1} nested multiparts"


def test_an_eight_bit_message_id_is_stored() -> None:
    # It used to reach SQLite as surrogate escapes: the store failed, the gateway retried forever.
    parsed = parse_message((CORPUS / "mxdesk" / "8bit-headers.eml").read_bytes())
    assert parsed.message_id == "<äÿ@example.com>"
    assert parsed.references == ("<a@example.com>", "<réf@example.com>")


def test_a_report_with_a_broken_message_id_keeps_its_parts() -> None:
    # The email package's Message-ID parser raises IndexError on `<<<>>>` (Python 3.11, 3.12).
    parsed = parse_message((CORPUS / "mxdesk" / "report-bogus.eml").read_bytes())
    assert len(parsed.attachments) == 3
    assert parsed.defects == ()


@pytest.mark.parametrize(
    ("what", "make"),
    [
        ("addresses in To:", addresses),
        ("encoded words in Subject:", encoded_words),
        ("encoded words in a file name", encoded_file_name),
    ],
)
def test_huge_headers_take_about_linear_time(
    what: str, make: Callable[[int], bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    sizes, seconds = [], []
    for n in (10**3, 10**4, 10**5):
        raw = make(n)
        best = math.inf
        for _ in range(3):  # the fastest of three: the least disturbed by a busy machine
            start = time.perf_counter()
            parsed = parse_message(raw)
            best = min(best, time.perf_counter() - start)
        sizes.append(len(raw))
        seconds.append(best)
        assert len(parsed.to_addrs) <= MAX_ADDRESSES
        assert len(parsed.subject) <= MAX_SUBJECT
        assert not any("kept as text" in d for d in parsed.defects)
    slope = math.log(seconds[-1] / seconds[0]) / math.log(sizes[-1] / sizes[0])
    with capsys.disabled():
        times = ", ".join(f"{s * 1000:.1f} ms" for s in seconds)
        print(f"\n{what}: 10^3..10^5 took {times}; slope of log time / log size {slope:.2f}")
    assert slope < 1.3, f"{what}: time grows faster than the input ({times})"


def test_a_message_too_costly_to_parse_is_kept_as_text(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real work allowed takes seconds to spend: ten slow Content-Type values exhaust this.
    monkeypatch.setattr(parse, "PARSE_WORK", 10 * parse.MAX_PARSED_HEADER**2)
    slow = parts(50, lambda i: b'text/plain; name="%d' % i + b'"' * parse.MAX_PARSED_HEADER)
    parsed = parse_message(slow)
    assert parsed.subject == "50 parts"
    assert parsed.defects == (
        f"message: headers too costly to parse (more than {parse.PARSE_WORK} units); kept as text",
    )
    assert parse_message(parts(50, lambda i: b"text/plain")).defects == ()


def test_an_address_header_is_read_from_its_first_characters_only() -> None:
    parsed = parse_message(addresses(100_000))
    assert parsed.to_addrs == tuple(f"p{i}@example.com" for i in range(MAX_ADDRESSES))


def regenerate() -> None:
    """Rewrites the golden file with what the store makes of each message now."""
    with tempfile.TemporaryDirectory() as where:
        results = {
            name: file_one(make(), Path(where) / str(i))
            for i, (name, make) in enumerate(MESSAGES.items())
        }
    text = json.dumps(results, indent=1, sort_keys=True, ensure_ascii=False)
    GOLDEN.write_text(text + "\n", "utf-8")
    print(f"{GOLDEN.name}: {len(results)} messages; review `git diff` before committing it")


if __name__ == "__main__":
    regenerate()
