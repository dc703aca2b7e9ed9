"""Company outbox settings and the encryption of their passwords."""

from __future__ import annotations

import dataclasses
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mxdesk import config as cfg
from mxdesk import state
from mxdesk.outbox import (
    Endpoint,
    OutboxError,
    OutboxView,
    endpoint,
    list_outboxes,
    load_outbox,
    remove_outbox,
    set_outbox,
    show_outbox,
)
from mxdesk.secrets import SecretsError, decrypt, encrypt, secrets_key

PASSWORD = "app-pass-1234-xyz"
KEY = bytes(range(32))


@pytest.fixture
def conn(config: cfg.Config) -> Iterator[sqlite3.Connection]:
    c = state.connect(config.general.state_db)
    yield c
    c.close()


def _set(conn: sqlite3.Connection, **changes: Any) -> OutboxView:
    args: dict[str, Any] = {
        "tenant": "marca",
        "host": "smtp.marca.example",
        "port": None,
        "security": None,
        "user": None,
        "password": PASSWORD,
        "address": "suporte@marca.example",
        "sender_name": "Suporte Marca",
    }
    args.update(changes)
    return set_outbox(conn, KEY, **args)


# -- encryption ----------------------------------------------------------------------------


def test_encrypt_round_trip_with_a_fresh_nonce_each_time() -> None:
    first = encrypt(KEY, "senha çé", "outbox:marca")
    assert decrypt(KEY, first, "outbox:marca") == "senha çé"
    assert encrypt(KEY, "senha çé", "outbox:marca") != first
    assert b"senha" not in first


@pytest.mark.parametrize(
    ("key", "context", "damage"),
    [
        (KEY, "outbox:outra", False),  # moved to another tenant's row
        (bytes(32), "outbox:marca", False),  # another installation's key
        (KEY, "outbox:marca", True),  # a changed byte
    ],
    ids=["other-context", "wrong-key", "tampered"],
)
def test_decrypt_refuses_what_it_cannot_authenticate(
    key: bytes, context: str, damage: bool
) -> None:
    blob = bytearray(encrypt(KEY, PASSWORD, "outbox:marca"))
    if damage:
        blob[-1] ^= 1
    with pytest.raises(SecretsError, match="cannot decrypt") as refused:
        decrypt(key, bytes(blob), context)
    assert PASSWORD not in str(refused.value)


def test_decrypt_refuses_a_truncated_or_unknown_version_blob() -> None:
    blob = encrypt(KEY, PASSWORD, "outbox:marca")
    for bad in (blob[:20], b"\x02" + blob[1:], b""):
        with pytest.raises(SecretsError, match="damaged"):
            decrypt(KEY, bad, "outbox:marca")


# -- the key -------------------------------------------------------------------------------


def _general(tmp_path: Path) -> cfg.GeneralConfig:
    return cfg.GeneralConfig(secrets_key_file=tmp_path / "state" / "secrets.key")


def test_key_is_made_once_private_and_then_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    general = _general(tmp_path)
    with pytest.raises(SecretsError, match="run 'mxdesk init'"):
        secrets_key(general)
    key = secrets_key(general, create=True)
    assert len(key) == 32
    assert secrets_key(general) == key == secrets_key(general, create=True)
    assert stat.S_IMODE(general.secrets_key_file.stat().st_mode) == 0o600


def test_damaged_key_is_an_error_not_a_new_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    general = _general(tmp_path)
    general.secrets_key_file.parent.mkdir()
    general.secrets_key_file.write_bytes(b"x" * 31)
    with pytest.raises(SecretsError, match="damaged"):
        secrets_key(general, create=True)
    assert general.secrets_key_file.read_bytes() == b"x" * 31


def test_systemd_credential_beats_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    general = _general(tmp_path)
    from_file = secrets_key(general, create=True)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / general.secrets_credential).write_bytes(KEY)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert secrets_key(general) == KEY != from_file
    (credentials / general.secrets_credential).unlink()  # a unit without this credential
    assert secrets_key(general) == from_file


# -- presets and defaults ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "host", "port", "security", "expected"),
    [
        ("gmail", None, None, None, Endpoint("smtp.gmail.com", 465, "ssl")),
        ("outlook", None, None, None, Endpoint("smtp.office365.com", 587, "starttls")),
        ("outlook", None, 25, None, Endpoint("smtp.office365.com", 25, "starttls")),
        ("outlook", "relay.example", None, "ssl", Endpoint("relay.example", 465, "ssl")),
        (None, "mail.example", None, None, Endpoint("mail.example", 465, "ssl")),
        (None, "mail.example", None, "starttls", Endpoint("mail.example", 587, "starttls")),
        (None, "mail.example", None, "none", Endpoint("mail.example", 25, "none")),
    ],
)
def test_preset_and_security_fill_what_is_not_given(
    preset: str | None, host: str | None, port: int | None, security: str | None, expected: Endpoint
) -> None:
    assert endpoint(preset, host, port, security) == expected


def test_gmail_preset_logs_in_with_the_address(conn: sqlite3.Connection) -> None:
    view = _set(conn, preset="gmail", host=None, address="Ana@Marca.example")
    assert dataclasses.asdict(view) | {"updated": 0} == {
        "tenant": "marca",
        "host": "smtp.gmail.com",
        "port": 465,
        "security": "ssl",
        "user": "ana@marca.example",
        "address": "ana@marca.example",
        "sender_name": "Suporte Marca",
        "verify": True,
        "ca_file": "",
        "password_set": True,
        "updated": 0,
        "oauth_channel": "",
    }


# -- storing -------------------------------------------------------------------------------


def test_set_show_load_round_trip(conn: sqlite3.Connection, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    _set(conn, security="starttls", user="login-ana", verify=False, ca_file=str(ca))
    shown = show_outbox(conn, "marca")
    assert (shown.port, shown.user, shown.verify, shown.password_set) == (
        587,
        "login-ana",
        False,
        True,
    )
    assert PASSWORD not in repr(shown)
    loaded = load_outbox(conn, KEY, "marca")
    assert loaded is not None
    assert (loaded.host, loaded.user, loaded.password, loaded.ca_file) == (
        "smtp.marca.example",
        "login-ana",
        PASSWORD,
        str(ca),
    )
    assert PASSWORD not in repr(loaded)
    assert load_outbox(conn, KEY, "outra") is None
    assert [v.tenant for v in list_outboxes(conn)] == ["marca"]


def test_without_password_there_is_no_login(conn: sqlite3.Connection) -> None:
    view = _set(conn, password=None, security="none")
    assert view.password_set is False
    loaded = load_outbox(conn, KEY, "marca")
    assert loaded is not None and (loaded.user, loaded.password) == ("", "")


def test_set_again_replaces_and_remove_forgets(conn: sqlite3.Connection) -> None:
    _set(conn)
    _set(conn, host="smtp2.marca.example", password="other")
    loaded = load_outbox(conn, KEY, "marca")
    assert loaded is not None and (loaded.host, loaded.password) == ("smtp2.marca.example", "other")
    remove_outbox(conn, "marca")
    assert load_outbox(conn, KEY, "marca") is None
    with pytest.raises(OutboxError, match="has no outbox"):
        show_outbox(conn, "marca")
    with pytest.raises(OutboxError, match="has no outbox"):
        remove_outbox(conn, "marca")


def test_password_moved_to_another_tenant_does_not_decrypt(conn: sqlite3.Connection) -> None:
    _set(conn)
    _set(conn, tenant="outra", password="outra-senha")
    conn.execute(
        "UPDATE outboxes SET password=(SELECT password FROM outboxes WHERE tenant='marca')"
        " WHERE tenant='outra'"
    )
    with pytest.raises(SecretsError, match="outbox:outra"):
        load_outbox(conn, KEY, "outra")


def test_password_is_not_in_the_database_file(config: cfg.Config) -> None:
    conn = state.connect(config.general.state_db)
    _set(conn)
    _set(conn, tenant="outra")
    files = [config.general.state_db, config.general.state_db.with_name("state.db-wal")]
    before_checkpoint = b"".join(p.read_bytes() for p in files if p.exists())
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    after = config.general.state_db.read_bytes()
    assert b"smtp.marca.example" in before_checkpoint + after  # the file is what was written
    for raw in (before_checkpoint, after):
        assert PASSWORD.encode() not in raw


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tenant": "ninguem"}, "no tenant 'ninguem'"),
        ({"host": "bad host"}, "not a DNS name or an IP address"),
        ({"host": "-x.example"}, "not a DNS name"),
        ({"host": None}, "no host"),
        ({"port": 0}, "port 0 is not between 1 and 65535"),
        ({"port": 65536}, "port 65536"),
        ({"security": "tls"}, "security 'tls' is not one of ssl, starttls, none"),
        ({"preset": "yahoo"}, "preset 'yahoo'"),
        ({"address": "not-an-address"}, "address:"),
        ({"ca_file": "/nonexistent/ca.pem"}, "CA file /nonexistent/ca.pem does not exist"),
        ({"security": "none"}, "in clear"),
        ({"user": "ana", "password": ""}, "without a password"),
        ({"password": "a\nb"}, "control characters"),
        ({"sender_name": "x" * 101}, "at most 100"),
    ],
)
def test_bad_settings_are_refused_with_a_reason(
    conn: sqlite3.Connection, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(state.StateError, match=message):
        _set(conn, **changes)
    assert list_outboxes(conn) == []


@pytest.mark.parametrize("port", [1, 65535])
def test_ports_at_the_bounds_are_accepted(conn: sqlite3.Connection, port: int) -> None:
    assert _set(conn, port=port, sender_name="x" * 100).port == port


def test_ip_address_host(conn: sqlite3.Connection) -> None:
    assert _set(conn, host="[::1]").host == "::1"
    assert _set(conn, host="127.0.0.1").host == "127.0.0.1"
