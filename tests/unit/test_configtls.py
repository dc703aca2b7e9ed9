"""The gateway's certificate and key, loaded by check-config and the daemons as STARTTLS
loads them: what is wrong is said of the file and the key that names it."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from tls_files import make_tls_files

from mxdesk import config as cfg
from mxdesk import configcheck
from mxdesk.gateway.sessions import tls_context
from mxdesk.startup import StartupError


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A certificate and its key, another certificate's key, both in one file, the key
    encrypted with a passphrase, and a file that is none of these."""
    root = tmp_path_factory.mktemp("tls")
    _, cert, key = make_tls_files(root / "one", "mx.marca.example")
    _, _, other_key = make_tls_files(root / "two", "mx.marca.example")
    files = {"cert": cert, "key": key, "other_key": other_key}
    files["both"] = root / "both.pem"
    files["both"].write_bytes(key.read_bytes() + cert.read_bytes())
    files["encrypted"] = root / "encrypted.pem"
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    files["encrypted"].write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    files["junk"] = root / "junk.pem"
    files["junk"].write_text("not a certificate\n")
    return files


_NOT_CERT = "{} is not a PEM certificate: set tls_cert to the certificate (chain)"
_KEY_AS_CERT = (
    "{} is not a PEM certificate but a private key: set tls_cert to the certificate (chain)"
    " and tls_key to its key"
)
_CERT_AS_KEY = "{} is not a PEM private key but a certificate: set tls_key to the certificate's key"
_ENCRYPTED = (
    "{} is encrypted with a passphrase, which the gateway cannot be given: decrypt it"
    " (openssl pkey -in {} -out NEW.pem) and set tls_key to the new file"
)
_MISMATCH = (
    "{} does not match the certificate {}: set tls_key to the key the certificate was made for"
)


@pytest.mark.parametrize(
    ("cert", "key", "expected"),
    [
        ("key", "key", [("tls_cert", _KEY_AS_CERT, "key")]),
        ("key", "cert", [("tls_cert", _KEY_AS_CERT, "key"), ("tls_key", _CERT_AS_KEY, "cert")]),
        ("junk", "key", [("tls_cert", _NOT_CERT, "junk")]),
        ("cert", "other_key", [("tls_key", _MISMATCH, "other_key", "cert")]),
        ("cert", "encrypted", [("tls_key", _ENCRYPTED, "encrypted", "encrypted")]),
        ("cert", "key", []),
        ("both", "both", []),
    ],
)
def test_check_config_and_the_daemons_load_the_certificate_and_key(
    tmp_path: Path, tls_files: dict[str, Path], cert: str, key: str, expected: list[Any]
) -> None:
    # Seen: tls_cert naming the key file passed check-config, and the gateway then stopped
    # with "cannot be loaded ([SSL] PEM lib (_ssl.c:3905))".
    path = tmp_path / "mxdesk.toml"
    path.write_text(
        '[mxdesk]\nbase_domain = "marca.example"\nuser = ""\n\n[gateway]\n'
        f'tls_cert = "{tls_files[cert]}"\ntls_key = "{tls_files[key]}"\n'
    )
    lines = {"tls_cert": 6, "tls_key": 7}
    wanted = [
        f"{path}:{lines[name]}: gateway.{name}: " + message.format(*(tls_files[f] for f in files))
        for name, message, *files in expected
    ]
    assert [str(p) for p in configcheck.check(path).errors] == wanted
    config = cfg.load(path)
    # The gateway refuses to start with the same words; the store does not read the files.
    assert [str(p) for p in configcheck.daemon_errors(config)] == wanted
    assert configcheck.daemon_errors(config, gateway=False) == []
    # Where the gateway loads them (at start, on SIGHUP), the same words; an encrypted key
    # is refused there too, not asked for on a terminal.
    if wanted:
        with pytest.raises(StartupError) as info:
            tls_context(config)
        assert str(info.value) == "; ".join(wanted)
    else:
        assert isinstance(tls_context(config), ssl.SSLContext)
