"""What the tests' private Dovecot instances share: the user they run as, the settings that make
Dovecot validate the loopback OAuth 2.0 server's tokens itself, stopping its master, and
waiting for it."""

from __future__ import annotations

import base64
import grp
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from oauth_jwt import OAuth2Keys

# XOAUTH2 and OAUTHBEARER with access tokens that Dovecot validates itself (passdb oauth2,
# introspection_mode = local): it checks the JWT's signature with the key stored under
# <key dict>/<azp>/<alg>/<kid> (lib-oauth2/oauth2-jwt.c), then exp, nbf, iat and iss; it never
# talks to the issuer. Each passdb answers its own mechanisms only: otherwise a token would also
# be tried as a password, and a password as a token.
OAUTH2_MECHANISMS = " xoauth2 oauthbearer"


PASSWORD_MECHANISMS = "\n  mechanisms = plain login"


OAUTH2_PASSDB = """\
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {conf}
  # Logs why a token was refused ("Local validation failed: Token has expired").
  auth_verbose = yes
}}
"""


OAUTH2_CONF = """\
introspection_mode = local
local_validation_key_dict = fs:posix:prefix={keys}/
# The JWT names its user in "email"; it must equal the login (username_format %Lu lowercases).
username_attribute = email
issuers = {issuer}
# Dovecot would refuse a token whose "active" claim is not "true"; these tokens have none.
active_attribute =
active_value =
"""


def _dict_key(identifier: str) -> str:
    """A JWT's azp or kid as Dovecot turns it into a path component (escape_identifier)."""
    return identifier.replace("%", "%25").replace("/", "%2f")


def oauth2_settings(directory: Path, keys: OAuth2Keys | None, uid: int, gid: int) -> dict[str, str]:
    """The values of the ``{oauth2_mechanisms}``, ``{password_mechanisms}`` and
    ``{oauth2_passdb}`` fields of a Dovecot config template: all empty without keys, so that the
    config stays what it was. With keys, writes the key dict and dovecot-oauth2.conf.ext into
    directory, readable only by uid and gid (Dovecot's auth process)."""
    if keys is None:
        return {"oauth2_mechanisms": "", "password_mechanisms": "", "oauth2_passdb": ""}
    if not keys.issuer or any(c.isspace() for c in keys.issuer):
        raise ValueError(f"issuer {keys.issuer!r}: one URL, no spaces")
    for name in (keys.azp, keys.kid):
        if not name or name.startswith(".") or any(c.isspace() for c in name):
            raise ValueError(f"azp/kid {name!r}: not empty, no leading '.', no spaces")
    keys_dir = directory / "oauth2-keys"
    algorithm_dir = keys_dir / _dict_key(keys.azp) / "HS256"
    algorithm_dir.mkdir(parents=True)
    key_file = algorithm_dir / _dict_key(keys.kid)
    # Base64 without a newline: that is what Dovecot decodes for an HMAC key.
    key_file.write_bytes(base64.b64encode(keys.secret))
    conf = directory / "dovecot-oauth2.conf.ext"
    conf.write_text(OAUTH2_CONF.format(keys=keys_dir, issuer=keys.issuer))
    for path in (keys_dir, algorithm_dir.parent, algorithm_dir, key_file, conf):
        os.chown(path, uid, gid)
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    return {
        "oauth2_mechanisms": OAUTH2_MECHANISMS,
        "password_mechanisms": PASSWORD_MECHANISMS,
        "oauth2_passdb": OAUTH2_PASSDB.format(conf=conf),
    }


def end_session(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to Dovecot's master (it stops its children); SIGKILL to its session if not."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)


def wait_logged(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    log: Callable[[], str] = str,
    error: type[Exception] = RuntimeError,
) -> None:
    """Polls condition; error with the end of log after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout}s waiting for {what}: {log()[-2000:]}")
        time.sleep(0.05)


class MailServerError(RuntimeError):
    """The server could not start or a doveadm command failed; the message says why."""


@dataclass(frozen=True)
class MailOwner:
    """The unprivileged user that owns the Maildirs and runs Dovecot's processes."""

    user: str
    group: str
    uid: int
    gid: int


def mail_owner() -> MailOwner:
    """The current user, or ``nobody`` for root: Dovecot will not touch mail as uid 0."""
    try:
        entry = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError as e:
        raise MailServerError(
            f"{e}: Dovecot runs as the user and group of the tests, and needs their names;"
            " run the tests as a user listed in /etc/passwd"
        ) from e
    return MailOwner(entry.pw_name, group, entry.pw_uid, entry.pw_gid)
