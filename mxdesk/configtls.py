"""The gateway's TLS certificate and key: read from [gateway], loaded as STARTTLS loads them."""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from mxdesk.configread import Problem, Reader


class TlsFilesError(Exception):
    """The certificate and key cannot be loaded; problems says what is wrong with which."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def read_settings(gateway: Reader) -> tuple[Path | None, Path | None]:
    """tls_cert and tls_key of [gateway]: both or neither, each a file that exists."""
    cert, key = gateway.path("tls_cert", None), gateway.path("tls_key", None)
    if bool(cert) != bool(key):
        given = "tls_cert" if cert else "tls_key"
        gateway.errors.append(f"gateway.{given}: tls_cert and tls_key must be set together")
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        if path is not None and not path.is_file():
            gateway.errors.append(f"gateway.{name}: {path} does not exist")
    return cert, key


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL asks for an encrypted key's passphrase on the terminal, where
    # check-config or a daemon would wait; an empty one fails, and the key is said to be
    # encrypted.
    return b""


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server side of STARTTLS with cert (the chain) and key; raises TlsFilesError."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except OSError as exc:  # ssl.SSLError is one
        raise TlsFilesError(_diagnosis(cert, key, exc)) from exc
    return context


def problems(cert: Path | None, key: Path | None) -> list[Problem]:
    """Why the gateway cannot load cert and key; nothing when they load or are not both set
    and there (the file's own errors say that)."""
    if cert is None or key is None or not cert.is_file() or not key.is_file():
        return []
    try:
        server_context(cert, key)
    except TlsFilesError as exc:
        return exc.problems
    return []


def _certificate(data: bytes) -> x509.Certificate | None:
    """The first certificate of a PEM file, the one load_cert_chain serves."""
    try:
        return x509.load_pem_x509_certificates(data)[0]
    except ValueError:
        return None


def _private_key(data: bytes) -> PrivateKeyTypes | None:
    """The private key of a PEM file; raises TypeError when it is encrypted."""
    try:
        return serialization.load_pem_private_key(data, None)
    except (ValueError, UnsupportedAlgorithm):
        return None


def _holds_a_key(data: bytes) -> bool:
    try:
        return _private_key(data) is not None
    except TypeError:
        return True


def _diagnosis(cert: Path, key: Path, error: OSError) -> list[Problem]:
    """What is wrong with cert and key, which OpenSSL reports as "PEM lib" either way."""
    found, read = [], {}
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        try:
            read[name] = path.read_bytes()
        except OSError as exc:
            unread = f"{path} cannot be read ({exc.strerror}): check its owner and mode"
            found.append(Problem(f"gateway.{name}", unread))
    if found:
        return found
    cert_data, key_data = read["tls_cert"], read["tls_key"]
    certificate = _certificate(cert_data)
    if certificate is None:
        what = " but a private key" if _holds_a_key(cert_data) else ""
        also = " and tls_key to its key" if what else ""
        message = f"{cert} is not a PEM certificate{what}: set tls_cert to the certificate (chain)"
        found.append(Problem("gateway.tls_cert", message + also))
    try:
        private = _private_key(key_data)
    except TypeError:
        message = (
            f"{key} is encrypted with a passphrase, which the gateway cannot be given: decrypt"
            f" it (openssl pkey -in {key} -out NEW.pem) and set tls_key to the new file"
        )
        return [*found, Problem("gateway.tls_key", message)]
    if private is None:
        what = " but a certificate" if _certificate(key_data) else ""
        message = f"{key} is not a PEM private key{what}: set tls_key to the certificate's key"
        found.append(Problem("gateway.tls_key", message))
    elif certificate is not None and certificate.public_key() != private.public_key():
        message = (
            f"{key} does not match the certificate {cert}: set tls_key to the key the"
            " certificate was made for"
        )
        found.append(Problem("gateway.tls_key", message))
    if found:
        return found
    reason = getattr(error, "reason", None) or error.strerror or error
    message = f"{cert} with {key} cannot be loaded ({reason}): check both files"
    return [Problem("gateway.tls_cert", message)]
