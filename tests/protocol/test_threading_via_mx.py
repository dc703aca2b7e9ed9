"""Threading as a customer sees it: mail sent to the MX lands on the right ticket."""

from __future__ import annotations

from conftest import MAILBOX, Running, wait_for
from wire import send_message, stored_messages


def _mail(headers: str, body: str = "texto") -> bytes:
    return (headers.strip().replace("\n", "\r\n") + f"\r\n\r\n{body}\r\n").encode()


async def _deliver(running: Running, sender: str, data: bytes, count: int) -> list[object]:
    assert (await send_message(running.port, sender, [MAILBOX], data)).startswith("250")
    return await wait_for(
        lambda: len(rows := stored_messages(running.config.store.database)) == count and rows,
        what=f"{count} stored messages",
    )


async def test_replies_tags_and_auto_replies_thread_as_expected(running: Running) -> None:
    first = _mail("""
From: Cliente <cliente@example.org>
To: suporte@marca.helpdesk.example
Subject: Pedido 123 atrasado
Message-ID: <pedido-1@example.org>
""")
    rows = await _deliver(running, "cliente@example.org", first, 1)
    ticket = rows[0]["ticket"]  # type: ignore[index]

    reply = _mail("""
From: Cliente <cliente@example.org>
To: suporte@marca.helpdesk.example
Subject: Re: Pedido 123 atrasado
Message-ID: <pedido-2@example.org>
In-Reply-To: <pedido-1@example.org>
""")
    rows = await _deliver(running, "cliente@example.org", reply, 2)
    assert rows[1]["ticket"] == ticket  # type: ignore[index]

    stranger = _mail(f"""
From: Estranho <estranho@outro.example>
To: suporte@marca.helpdesk.example
Subject: [#{ticket}] quero ver este ticket
Message-ID: <x-1@outro.example>
""")
    rows = await _deliver(running, "estranho@outro.example", stranger, 3)
    assert rows[2]["ticket"] != ticket  # type: ignore[index]

    tagged = _mail(f"""
From: Cliente <cliente@example.org>
To: suporte@marca.helpdesk.example
Subject: Mais uma coisa [#{ticket}]
Message-ID: <pedido-3@example.org>
""")
    # The sender takes part, but nothing proves the From: (no DNS for example.org here): a
    # tag alone does not join, it opens a ticket marked with its claim.
    rows = await _deliver(running, "cliente@example.org", tagged, 4)
    assert rows[3]["ticket"] not in (ticket, rows[2]["ticket"])  # type: ignore[index]

    auto = _mail("""
From: Cliente <cliente@example.org>
To: suporte@marca.helpdesk.example
Subject: Ausente: Pedido 123 atrasado
Message-ID: <auto-1@example.org>
In-Reply-To: <pedido-2@example.org>
Auto-Submitted: auto-replied
""")
    rows = await _deliver(running, "", auto, 5)
    assert rows[4]["ticket"] == ticket  # type: ignore[index]
    assert "automatic" in rows[4]["flags"]  # type: ignore[index]
    assert len({r["ticket"] for r in rows}) == 3  # type: ignore[index]
