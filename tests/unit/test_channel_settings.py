"""Channel settings: ports by protocol and security, presets, after-actions, secrets never shown."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from mxdesk import channels, state
from mxdesk import config as cfg
from mxdesk.channels import ChannelError, ChannelView, add_channel
from mxdesk.gateway.fetch.ledger import Fetched, commit_batch, known, message_key
from mxdesk.gateway.spool import Spool

KEY = bytes(range(32))
PASSWORD = "s3nha:com espaço"


@pytest.fixture
def conn(config: cfg.Config) -> Iterator[sqlite3.Connection]:
    c = state.connect(config.general.state_db)
    yield c
    c.close()


def _add(conn: sqlite3.Connection, **changes: Any) -> ChannelView:
    args: dict[str, Any] = {
        "tenant": "marca",
        "address": "suporte@marca.com.br",
        "protocol": "imap",
        "host": "mail.marca.com.br",
        "user": None,
        "secret": PASSWORD,
    }
    args.update(changes)
    return add_channel(conn, KEY, **args)


@pytest.mark.parametrize(
    ("protocol", "security", "port"),
    [
        ("imap", "ssl", 993),
        ("imap", "starttls", 143),
        ("pop3", "ssl", 995),
        ("pop3", "starttls", 110),
    ],
)
def test_default_ports(conn: sqlite3.Connection, protocol: str, security: str, port: int) -> None:
    assert _add(conn, protocol=protocol, security=security).port == port


def test_port_443_only_when_given(conn: sqlite3.Connection) -> None:
    view = _add(conn, security="starttls", port=443)
    assert view.port == 443
    assert _add(conn, address="outro@marca.com.br", security="starttls").port == 143


def test_plain_password_refused(conn: sqlite3.Connection) -> None:
    with pytest.raises(ChannelError, match="in clear"):
        _add(conn, security="none")


def test_gmail_preset_takes_an_app_password(conn: sqlite3.Connection) -> None:
    with pytest.raises(ChannelError, match="16-character app password"):
        _add(conn, host=None, preset="gmail", secret="minha-senha-normal")
    view = _add(conn, host=None, preset="gmail", secret="abcd efgh ijkl mnop")
    assert (view.host, view.port, view.security) == ("imap.gmail.com", 993, "ssl")
    loaded = channels.load_channel(conn, KEY, view.name)
    assert loaded.secret == "abcdefghijklmnop"


def test_outlook_preset_is_oauth2_without_a_password(conn: sqlite3.Connection) -> None:
    view = _add(conn, host=None, preset="outlook", secret="")
    assert (view.host, view.auth, view.oauth_provider) == (
        "outlook.office365.com",
        "oauth2",
        "microsoft",
    )
    assert not view.secret_set


@pytest.mark.parametrize("after", ["seen", "move:Arquivo"])
def test_pop3_has_no_flags_or_folders(conn: sqlite3.Connection, after: str) -> None:
    with pytest.raises(ChannelError, match="POP3 has no flags"):
        _add(conn, protocol="pop3", after=after)


@pytest.mark.parametrize("after", ["trash", "move:", "move", "delete:x"])
def test_bad_after(conn: sqlite3.Connection, after: str) -> None:
    with pytest.raises(ChannelError, match="keep, seen, move:FOLDER or delete"):
        _add(conn, after=after)


@pytest.mark.parametrize("where", ["folder", "after"])
def test_a_folder_name_of_200_characters_is_taken_and_201_refused(
    conn: sqlite3.Connection, where: str
) -> None:
    """MAX_FOLDER, for the folder read and for the one --after move:FOLDER moves to."""

    def folder(name: str) -> dict[str, str]:
        return {"folder": name} if where == "folder" else {"after": f"move:{name}"}

    view = _add(conn, **folder("F" * 200))
    assert (view.folder, view.after) == (
        ("F" * 200, "keep") if where == "folder" else ("INBOX", "move:" + "F" * 200)
    )
    with pytest.raises(ChannelError, match="give 1 to 200 printable characters"):
        _add(conn, address="outro@marca.com.br", **folder("F" * 201))
    # Nothing of the refused channel stays: no channel, no mailbox for its address.
    assert [c.address for c in channels.list_channels(conn)] == [view.address]
    assert state.get_mailbox(conn, "outro@marca.com.br") is None


def test_since_takes_up_to_3650_days(conn: sqlite3.Connection) -> None:
    """MAX_SINCE_DAYS: ten years back at most."""
    assert _add(conn, since_days=3650).since_days == 3650
    with pytest.raises(ChannelError, match="--since: 0 to 3650 days"):
        _add(conn, address="outro@marca.com.br", since_days=3651)
    assert len(channels.list_channels(conn)) == 1


def test_secret_encrypted_and_never_in_the_view(conn: sqlite3.Connection) -> None:
    view = _add(conn)
    row = conn.execute("SELECT secret FROM channels").fetchone()
    assert PASSWORD.encode() not in bytes(row[0])
    assert PASSWORD not in repr(view) and PASSWORD not in repr(
        channels.load_channel(conn, KEY, view.name)
    )
    assert channels.load_channel(conn, KEY, view.name).secret == PASSWORD


def test_address_becomes_a_mailbox_of_the_tenant(conn: sqlite3.Connection) -> None:
    _add(conn, sender_name="Suporte Marca")
    box = state.get_mailbox(conn, "suporte@marca.com.br")
    assert box is not None and box.tenant == "marca" and box.name == "Suporte Marca"
    assert channels.channel_of_address(conn, "Suporte@Marca.com.br") == "marca"
    with pytest.raises(ChannelError, match="already exists"):
        _add(conn)


def test_secret_change_restarts_and_remove_keeps_the_mailbox(conn: sqlite3.Connection) -> None:
    view = _add(conn)
    changed = channels.set_secret(conn, KEY, view.name, "nova")
    assert changed.updated > view.updated
    assert channels.load_channel(conn, KEY, view.name).secret == "nova"
    channels.remove_channel(conn, view.name)
    assert channels.list_channels(conn) == []
    assert state.get_mailbox(conn, view.address) is not None


def test_message_key_survives_added_headers() -> None:
    msg = (
        b"From: a@b.example\r\nDate: Wed, 2 Dec 2026 10:00:00 +0000\r\n"
        b"Message-ID: <x@y>\r\n\r\nhi\r\n"
    )
    assert message_key(msg) == message_key(b"Received: from new.server\r\n" + msg)
    assert message_key(msg) != message_key(msg.replace(b"<x@y>", b"<z@y>"))
    bare = b"Subject: no id\r\n\r\nhi\r\n"
    assert message_key(bare).startswith("sha256:")


async def test_ledger_commits_once(config: cfg.Config) -> None:
    spool = Spool(config.gateway.spool_path)
    await spool.open()
    try:
        from mxdesk.gateway.entries import NewEntry, Recipient

        def item(uid: str, qid: str) -> Fetched:
            entry = NewEntry(qid, "in", "imap x", "", (Recipient("a@b", "a@b", "marca"),), b"x\r\n")
            return Fetched(uid, "mid:1", entry)

        added: list[int] = []
        await spool.transact(
            lambda c: added.append(
                commit_batch(c, "ch", [item("1", "Q1")], uidvalidity=7, last_uid=1, owe=True)
            ),
            new=True,
        )
        await spool.transact(
            lambda c: added.append(
                commit_batch(c, "ch", [item("9", "Q2")], uidvalidity=8, last_uid=9, owe=False)
            ),
            new=True,
        )
        assert added == [1, 0]
        assert await spool.read(lambda c: known(c, "ch", ["mid:1", "mid:2"])) == {"mid:1"}
        assert await spool.exists("Q1") and not await spool.exists("Q2")
    finally:
        await spool.close()


def test_mailbox_of_a_channel_is_not_removed_under_it(config: cfg.Config) -> None:
    from mxdesk.changes import remove_mailbox
    from mxdesk.tenants import remove_tenant

    conn = state.connect(config.general.state_db)
    try:
        view = _add(conn)
        with pytest.raises(state.StateError, match="channel remove"):
            remove_mailbox(conn, config, view.address)
        removed = remove_tenant(conn, config, "marca", force=True)
        assert view.address in removed.mailboxes
        assert channels.list_channels(conn) == []
    finally:
        conn.close()
