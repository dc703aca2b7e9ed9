"""Secret material kept by the installation: the Message-ID key and stored passwords' encryption."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mxdesk.config import GeneralConfig

KEY_BYTES = 32
_NOTICE = re.compile(r"^<n\.([0-9A-Za-z]{1,40})\.([0-9a-f]{24})@[^>]+>$")


def installation_key(state_dir: Path) -> bytes:
    """The installation's random key (<state_dir>/message-id.key, mode 0600), made once."""
    path = state_dir / "message-id.key"
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        state_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # made by another process meanwhile
            return path.read_bytes()
        try:
            key = secrets.token_bytes(KEY_BYTES)
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path} is damaged: remove it to make a new one")
    return key


def notice_message_id(key: bytes, queue_id: str, host_name: str) -> str:
    """The Message-ID of a delivery status notice the gateway makes: <n.<queue id>.<mac>@host>.
    The MAC under the installation key lets the store trust the notice's status fields."""
    mac = hmac.new(key, f"notice.{queue_id}".encode(), hashlib.sha256).hexdigest()[:24]
    return f"<n.{queue_id}.{mac}@{host_name}>"


def is_notice_message_id(key: bytes, message_id: str) -> bool:
    """True when message_id was made by notice_message_id under this key."""
    match = _NOTICE.match(message_id.strip())
    if match is None:
        return False
    expected = hmac.new(key, f"notice.{match[1]}".encode(), hashlib.sha256).hexdigest()[:24]
    return hmac.compare_digest(match[2], expected)


class SecretsError(Exception):
    """The secrets key is missing or damaged, or a stored secret cannot be decrypted."""


_VERSION = b"\x01"  # the first byte of every ciphertext: AES-256-GCM, 12-byte nonce
_NONCE_BYTES = 12
_TAG_BYTES = 16


def secrets_key_path(general: GeneralConfig) -> Path:
    """Where the key is read from: the systemd credential when the service has one (it is
    passed in $CREDENTIALS_DIRECTORY by LoadCredential=), else the configured file."""
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        path = Path(credentials) / general.secrets_credential
        if path.exists():
            return path
    return general.secrets_key_file


def secrets_key(general: GeneralConfig, create: bool = False) -> bytes:
    """The 32-byte key that encrypts stored passwords; with create, made when missing."""
    path = secrets_key_path(general)
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise SecretsError(f"no secrets key at {path}: run 'mxdesk init'") from None
        key = _create_key(path)
    except OSError as exc:
        raise SecretsError(f"cannot read the secrets key at {path}: {exc.strerror}") from None
    if len(key) != KEY_BYTES:
        raise SecretsError(
            f"the secrets key at {path} is damaged ({len(key)} bytes, not {KEY_BYTES}):"
            " restore it from a backup"
        )
    return key


def _create_key(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made by another process meanwhile
        return path.read_bytes()
    except OSError as exc:
        raise SecretsError(f"cannot create the secrets key at {path}: {exc.strerror}") from None
    key = secrets.token_bytes(KEY_BYTES)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    # Losing the key loses every stored password, so its directory entry is made durable too.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return key


def encrypt(key: bytes, plaintext: str, context: str) -> bytes:
    """AES-256-GCM with a random nonce; context (e.g. "outbox:marca") is authenticated, so the
    ciphertext decrypts only where it was stored."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
    return _VERSION + nonce + sealed


def decrypt(key: bytes, blob: bytes, context: str) -> str:
    """The plaintext of what encrypt() made under this key and context, else SecretsError."""
    if len(blob) < 1 + _NONCE_BYTES + _TAG_BYTES or blob[:1] != _VERSION:
        raise SecretsError(f"the stored secret of {context} is damaged: set it again")
    nonce, sealed = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
    try:
        plain = AESGCM(key).decrypt(nonce, sealed, context.encode("utf-8"))
    except InvalidTag:
        raise SecretsError(
            f"cannot decrypt the stored secret of {context}: the secrets key is not the one it"
            " was stored with, or the data was changed"
        ) from None
    return plain.decode("utf-8")
