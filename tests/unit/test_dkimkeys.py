"""A domain gets its DKIM keys at creation: private files 0600, records to publish, signing."""

from __future__ import annotations

import stat
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mxdesk import config as cfg
from mxdesk import dkimkeys, domains, state
from mxdesk.gateway import dkim as mxdkim
from mxdesk.names import builtin_reserved


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = cfg.parse({"mxdesk": {"state_dir": str(tmp_path)}, "dkim": {"ed25519": True}})
    conn = state.connect(config.general.state_db)
    state.add_tenant(conn, "helpdesk.example", "marca", "a@b.example", "plus", builtin_reserved())
    yield config, conn
    conn.close()


def test_hosted_domain_gets_rsa_and_ed25519_keys(setup) -> None:  # type: ignore[no-untyped-def]
    config, conn = setup
    view = domains.add_domain(conn, config, "marca", "marca", builtin_reserved())
    assert [r.algorithm for r in view.dkim] == ["rsa-sha256", "ed25519-sha256"]
    for record in dkimkeys.keys_of(conn, "marca.helpdesk.example"):
        path = Path(record.path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    keys = dkimkeys.load_signing_keys(conn, "marca.helpdesk.example")
    txt = {f"{r.name}.".encode(): r.txt.encode() for r in view.dkim}
    signed = mxdkim.sign(b"From: suporte@marca.helpdesk.example\r\nSubject: oi\r\n\r\nx\r\n", keys)
    for idx in (0, 1):
        assert dkim.DKIM(signed).verify(idx=idx, dnsfunc=lambda n, timeout=5: txt.get(n))


def test_keys_are_created_once(setup) -> None:  # type: ignore[no-untyped-def]
    config, conn = setup
    first = dkimkeys.create_keys(conn, config.dkim, "helpdesk.example")
    again = dkimkeys.create_keys(conn, config.dkim, "helpdesk.example")
    assert [r.path for r in first] == [r.path for r in again]


def test_a_weak_key_file_is_refused_when_loaded(setup) -> None:  # type: ignore[no-untyped-def]
    config, conn = setup
    (record, *_) = dkimkeys.create_keys(conn, config.dkim, "helpdesk.example")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    Path(record.path).write_bytes(
        weak.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(mxdkim.DkimKeyError, match="at least 2048"):
        dkimkeys.load_signing_keys(conn, "helpdesk.example")
