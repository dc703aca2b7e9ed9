"""POP3 with --after delete against a real spool: only what the spool has is ever deleted; the
mailbox's past (first look) and messages too big to fetch stay for a person (invariant 8)."""

from __future__ import annotations

import time
from pathlib import Path

from mxdesk.channels import ChannelView
from mxdesk.gateway.fetch.pop3fetch import Pop3Fetch
from mxdesk.gateway.fetch.session import SessionContext
from mxdesk.gateway.spool import Spool


def message(n: int, body: bytes = b"x") -> bytes:
    head = f"From: a@example.com\r\nMessage-ID: <m{n}@example.com>\r\nSubject: {n}\r\n\r\n"
    return head.encode() + body + b"\r\n"


class Mailbox:
    """A POP3 server's side as Pop3Fetch uses it: DELE marks, QUIT deletes what was marked."""

    def __init__(self, box: dict[int, tuple[str, bytes]]) -> None:
        self.box: dict[int, tuple[str, bytes]] = box
        self.marked: list[str] = []

    async def uidl(self) -> dict[int, str]:
        return {n: u for n, (u, _) in self.box.items()}

    async def sizes(self) -> dict[int, int]:
        return {n: len(d) for n, (_, d) in self.box.items()}

    async def retr(self, n: int, max_size: int) -> bytes:
        return self.box[n][1]

    async def top(self, n: int) -> bytes:
        return self.box[n][1]

    async def dele(self, n: int) -> None:
        self.marked.append(self.box[n][0])

    async def quit(self) -> None:
        self.box = {n: m for n, m in self.box.items() if m[0] not in self.marked}
        self.marked = []


async def test_delete_removes_only_what_the_spool_has(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    await spool.open()
    view = ChannelView(
        name="c@x.example", tenant="t", address="c@x.example", protocol="pop3",
        security="ssl", host="pop.example", port=995, user="u", auth="password",
        oauth_provider="", folder="INBOX", after="delete", since_days=0, verify=True,
        ca_file="", paused=False, secret_set=True, created=time.time() - 10, updated=0,
    )  # fmt: skip
    skipped: list[str] = []

    async def skip(uid: str, size: int) -> None:
        skipped.append(uid)

    ctx = SessionContext(
        view, spool, "mx.example", max_message_size=2000, batch=10, skipped=skip,
        committed=lambda n: None,
    )  # fmt: skip
    server = Mailbox({1: ("OLD-1", message(1)), 2: ("OLD-2", message(2))})
    try:
        await Pop3Fetch(ctx, server).run()  # type: ignore[arg-type]
        server.box[3] = ("NEW-BIG", message(3, b"y" * 5000))
        server.box[4] = ("NEW-OK", message(4))
        for _ in range(3):
            await Pop3Fetch(ctx, server).run()  # type: ignore[arg-type]
        # NEW-OK is in the spool and gone from the mailbox; the rest was never taken and stays.
        assert sorted(u for u, _ in server.box.values()) == ["NEW-BIG", "OLD-1", "OLD-2"]
        assert skipped == ["NEW-BIG"]
        count = await spool.read(lambda c: c.execute("SELECT count(*) FROM entries").fetchone())
        assert count[0] == 1
    finally:
        await spool.close()
