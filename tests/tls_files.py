"""A test CA and a server certificate it signed, as PEM files for the private servers of the
tests (Postfix, Dovecot) and for the clients that verify them."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "mxdesk test CA"


# KeyUsage flags in order: digital_signature … crl_sign, encipher_only, decipher_only.
CA_USAGE = x509.KeyUsage(False, False, False, False, False, True, True, False, False)


SERVER_USAGE = x509.KeyUsage(True, False, False, False, False, False, False, False, False)


def _certificate(
    subject: str,
    public: ec.EllipticCurvePublicKey,
    ca_key: ec.EllipticCurvePrivateKey,
    extensions: list[x509.ExtensionType],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)]))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    for extension in extensions:
        critical = isinstance(extension, (x509.BasicConstraints, x509.KeyUsage))
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(ca_key, hashes.SHA256())


def make_tls_files(directory: Path, host_name: str) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate it signed for host_name, localhost and 127.0.0.1,
    with the extensions strict verifiers insist on (key usage, key identifiers).
    Returns the paths of the CA certificate, the server certificate and its key."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(
        CA_NAME, ca_key.public_key(), ca_key, [x509.BasicConstraints(True, 0), CA_USAGE]
    )
    names = [x509.DNSName(host_name), x509.DNSName("localhost")]
    cert = _certificate(
        host_name,
        key.public_key(),
        ca_key,
        [
            x509.BasicConstraints(ca=False, path_length=None),
            SERVER_USAGE,
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            x509.SubjectAlternativeName([*names, x509.IPAddress(ip_address("127.0.0.1"))]),
        ],
    )
    paths = (directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].touch(mode=0o600)
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@asynccontextmanager
async def served_at_another_address(
    directory: Path, greeting: bytes
) -> AsyncIterator[tuple[ssl.SSLContext, int]]:
    """A TLS listener at 127.0.0.2 that sends greeting, with a certificate for localhost and
    127.0.0.1 only; yields a client context that trusts its CA, and its port. A client that
    checks the name it connected to refuses it; one that checks another name does not."""
    ca, cert, key = make_tls_files(directory, "other.example")
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)

    async def greet(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)

    listener = await asyncio.start_server(greet, "127.0.0.2", 0, ssl=served)
    try:
        yield ssl.create_default_context(cafile=str(ca)), listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
