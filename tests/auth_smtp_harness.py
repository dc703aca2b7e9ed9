"""A real SMTP server that demands AUTH after TLS, for testing a smarthost client on loopback.

What a company outbox looks like from outside (Gmail's port 465, Office 365's 587): Postfix's
smtpd on two loopback ports, Dovecot's auth service checking the password for it
(``smtpd_sasl_type = dovecot``), both private instances under one temporary directory, stopped
and removed on ``close()``::

    for program in REQUIRED_PROGRAMS:
        require_real(program)
    with AuthSmtpServer(
        user="ana@empresa.example", password="s3cret", refused_sender="blocked@empresa.example"
    ) as srv:
        srv.ssl_port        # implicit TLS (SMTPS, like 465)
        srv.starttls_port   # plain until STARTTLS (like 587)
        srv.ca_file         # the test CA's certificate: verify the server against it
        srv.host_name       # the name in the server certificate (127.0.0.1 is in it too)
        srv.wait_messages(1, containing=b"Subject: x")  # -> list[bytes], waits with a bound
        srv.messages()      # -> list[bytes], what was delivered so far

On both ports:

* TLS first: on the STARTTLS port EHLO offers no AUTH and MAIL FROM gets 530 until STARTTLS
  (``smtpd_tls_security_level = encrypt``, ``smtpd_tls_auth_only = yes``).
* AUTH PLAIN and LOGIN against the one user and password; a wrong password gets 535 5.7.8.
* With ``oauth2=`` (an ``oauth_jwt.OAuth2Keys``) also AUTH XOAUTH2 and OAUTHBEARER with an
  access token of that issuer whose ``email`` is the login: Dovecot checks the JWT's signature
  and expiry itself. A refused token gets 334 and a base64 JSON error first (the client answers
  with an empty line), then 535 5.7.8; PLAIN and LOGIN still take only the password.
* Without AUTH, MAIL FROM gets 554 5.7.1 (``smtpd_delay_reject = no``: restrictions answer at
  MAIL FROM, not at RCPT TO).
* ``refused_sender`` belongs to another login in ``smtpd_sender_login_maps``: MAIL FROM with it
  gets 553 5.7.1 "not owned by user" (``reject_known_sender_login_mismatch``); other senders
  pass, like a provider that lets a user send with their aliases.
* Postfix's ``virtual`` agent delivers each accepted message once per recipient into one
  Maildir; ``messages()`` returns those files in delivery order, with LF line endings and
  ``Return-Path:`` (the envelope sender), ``Delivered-To:`` (the recipient) and a ``Received:``
  line on top of what the client sent.

Dovecot runs in the foreground with its own ``base_dir`` and ``state_dir`` and no protocols, so
it shares nothing with a system Dovecot the package may have started.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from conftest import require_real
from daemons import free_port
from dovecot_common import end_session, oauth2_settings, wait_logged
from oauth_jwt import OAuth2Keys
from postfix_harness import MASTER_CF, PostfixError, PostfixInstance, port_open, postfix_binary
from tls_files import make_tls_files

REQUIRED_PROGRAMS = ("postfix", "dovecot")
MAILDIR_OWNER = "nobody"
DOVECOT_AUTH_USER = "dovecot"

DOVECOT_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
protocols =
log_path = {root}/dovecot.log
ssl = no
# Postfix asks only after TLS (smtpd_tls_auth_only), so plaintext mechanisms are safe here.
disable_plaintext_auth = no
auth_mechanisms = plain login{oauth2_mechanisms}
# A wrong password answers at once: tests must not wait out a failure delay or IP penalty.
auth_failure_delay = 0
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
passdb {{
  driver = passwd-file
  args = username_format=%u {root}/passwd{password_mechanisms}
}}
{oauth2_passdb}userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
"""

# One smtpd per port, virtual(8) for the Maildir, tlsmgr(8) for TLS; then PostfixInstance's.
SMTPD_SERVICES = """\
127.0.0.1:{ssl_port} inet n - n - - smtpd
  -o syslog_name=postfix/smtps
  -o smtpd_tls_wrappermode=yes
127.0.0.1:{starttls_port} inet n - n - - smtpd
  -o syslog_name=postfix/submission
virtual   unix  -       n       n       -       -       virtual
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
"""


class AuthSmtpError(RuntimeError):
    """The server could not be set up or started; the message says which part and why."""


@dataclass
class _SubmissionPostfix(PostfixInstance):
    """PostfixInstance with two TLS + AUTH smtpd ports and delivery to a Maildir."""

    ssl_port: int = 0
    settings: dict[str, str] = field(default_factory=dict)

    def write_config(self) -> None:
        super().write_config()
        postconf = postfix_binary("postconf")
        if postconf is None:
            raise PostfixError("postconf is not installed")
        subprocess.run(
            [postconf, "-c", str(self.config_dir), "-e"]
            + [f"{k}={v}" for k, v in self.settings.items()],
            check=True,
            capture_output=True,
            timeout=30,
        )
        # The base instance's own smtpd line would be a third port without these settings.
        services = [line for line in MASTER_CF.splitlines(True) if not line.startswith("127.")]
        smtpd = SMTPD_SERVICES.format(ssl_port=self.ssl_port, starttls_port=self.port)
        (self.config_dir / "master.cf").write_text(smtpd + "".join(services))


class AuthSmtpServer:
    """Postfix smtpd on an SMTPS and a STARTTLS port, Dovecot SASL, a Maildir of what it took.

    Everything lives under ``root``: by default a new directory under /tmp, removed on close. A
    given root is kept; the ``postfix`` user must be able to reach it (pytest's tmp_path is not).
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        user: str,
        password: str,
        refused_sender: str,
        host_name: str = "smtp.empresa.example",
        oauth2: OAuth2Keys | None = None,
    ) -> None:
        if ":" in user or "\n" in user:
            raise ValueError(f"user {user!r}: no ':' or newline")
        self.user, self.password = user, password
        self.refused_sender = refused_sender.lower()
        self.host_name = host_name
        self.oauth2 = oauth2
        self._own_root = root is None
        # Postfix's daemons run as `postfix` and must reach everything below root.
        self.root = root or Path(tempfile.mkdtemp(prefix="as", dir="/tmp"))
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self.ca_file, self.cert_file, self.key_file = make_tls_files(self.root / "tls", host_name)
        self.ssl_port = free_port()
        self.starttls_port = free_port()
        while self.starttls_port == self.ssl_port:
            self.starttls_port = free_port()
        self._dovecot: subprocess.Popen[bytes] | None = None
        self._postfix: _SubmissionPostfix | None = None

    @property
    def maildir(self) -> Path:
        return self.root / "mail" / "sink"

    @property
    def _dovecot_dir(self) -> Path:
        return self.root / "dovecot"

    @property
    def _auth_socket(self) -> Path:
        return self._dovecot_dir / "run" / "auth-postfix"

    # -- running ---------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Starts Dovecot, then Postfix; returns when both SMTP ports answer."""
        try:
            self._start_dovecot(timeout)
            self._postfix = self._make_postfix()
            self._postfix.start(timeout)
            wait_logged(
                lambda: port_open(self.ssl_port),
                timeout,
                f"smtpd on port {self.ssl_port}",
                error=AuthSmtpError,
            )
        except BaseException:
            self.close()
            raise

    def _start_dovecot(self, timeout: float) -> None:
        binary = postfix_binary("dovecot")  # a lookup in PATH and the sbin directories
        if binary is None:
            raise AuthSmtpError("dovecot is not installed")
        directory = self._dovecot_dir
        directory.mkdir(mode=0o755)
        # Stored hashed, so the test may choose any password (a ':' would end a plain one).
        digest = base64.b64encode(hashlib.sha256(self.password.encode()).digest()).decode()
        (directory / "passwd").write_text(f"{self.user}:{{SHA256}}{digest}\n")
        conf = directory / "dovecot.conf"
        uid = gid = 0
        if self.oauth2 is not None:
            # The auth process that reads the keys runs as Dovecot's default_internal_user.
            auth_user = pwd.getpwnam(DOVECOT_AUTH_USER)
            uid, gid = auth_user.pw_uid, auth_user.pw_gid
        oauth2 = oauth2_settings(directory, self.oauth2, uid, gid)
        conf.write_text(DOVECOT_CONF.format(root=directory, **oauth2))
        with open(directory / "stderr", "wb") as stderr:
            # Its own session, so that close() can end the master and the children it forked.
            self._dovecot = subprocess.Popen(
                [binary, "-F", "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
            )
        wait_logged(
            self._auth_ready,
            timeout,
            "Dovecot's auth socket",
            self._dovecot_log,
            error=AuthSmtpError,
        )

    def _auth_ready(self) -> bool:
        if self._dovecot is not None and self._dovecot.poll() is not None:
            raise AuthSmtpError(f"dovecot exited {self._dovecot.returncode}: {self._dovecot_log()}")
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(self._auth_socket))
            except OSError:
                return False
        return True

    def _make_postfix(self) -> _SubmissionPostfix:
        mail = self.root / "mail"
        mail.mkdir(mode=0o700)
        shutil.chown(mail, MAILDIR_OWNER)
        owner = {self.user.lower(): self.user, self.refused_sender: "another-login"}
        logins = self.root / "sender_logins"
        logins.write_text("".join(f"{address} {login}\n" for address, login in owner.items()))
        owner_ids = pwd.getpwnam(MAILDIR_OWNER)
        settings = {
            "myhostname": self.host_name,
            "smtpd_tls_cert_file": str(self.cert_file),
            "smtpd_tls_key_file": str(self.key_file),
            "smtpd_tls_security_level": "encrypt",
            "smtpd_tls_auth_only": "yes",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "dovecot",
            "smtpd_sasl_path": str(self._auth_socket),
            "smtpd_delay_reject": "no",
            "smtpd_sender_login_maps": f"texthash:{logins}",
            "smtpd_sender_restrictions": "reject_known_sender_login_mismatch,"
            " permit_sasl_authenticated, reject",
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
            "default_transport": "virtual",
            "virtual_mailbox_base": str(mail),
            "virtual_mailbox_maps": "static:sink/",
            "virtual_uid_maps": f"static:{owner_ids.pw_uid}",
            "virtual_gid_maps": f"static:{owner_ids.pw_gid}",
        }
        root = self.root / "postfix"
        return _SubmissionPostfix(
            self.starttls_port, {}, root=root, ssl_port=self.ssl_port, settings=settings
        )

    def close(self) -> None:
        """Stops Postfix and Dovecot and removes the directory (if the server made it)."""
        if self._postfix is not None:
            self._postfix.stop()
            self._postfix = None
        if self._dovecot is not None:
            end_session(self._dovecot)
            self._dovecot = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> AuthSmtpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- using -----------------------------------------------------------------------------

    def messages(self) -> list[bytes]:
        """The messages delivered so far, oldest first (one per recipient)."""
        # Maildir names start with the delivery time in seconds, then a sequence (M<usec>).
        files = sorted(self.maildir.glob("new/*"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [p.read_bytes() for p in files]

    def wait_messages(
        self, count: int = 1, containing: bytes = b"", timeout: float = 15.0
    ) -> list[bytes]:
        """The delivered messages that contain ``containing``, once there are at least count of
        them; AuthSmtpError with the servers' logs after timeout seconds."""

        def found() -> list[bytes]:
            return [m for m in self.messages() if containing in m]

        wait_logged(
            lambda: len(found()) >= count,
            timeout,
            f"{count} message(s)",
            self.log_text,
            AuthSmtpError,
        )
        return found()

    def log_text(self) -> str:
        """Postfix's and Dovecot's logs, for a failing test's message."""
        postfix = self._postfix.log_text() if self._postfix else ""
        return postfix + self._dovecot_log()

    def _dovecot_log(self) -> str:
        paths = [self._dovecot_dir / name for name in ("stderr", "dovecot.log")]
        return "".join(p.read_text(errors="replace") for p in paths if p.exists())


@contextlib.contextmanager
def auth_server(
    user: str, password: str, refused_sender: str, oauth2: OAuth2Keys | None = None
) -> Iterator[AuthSmtpServer]:
    """A started AuthSmtpServer; skips without Postfix or Dovecot (fails under CI)."""
    for program in REQUIRED_PROGRAMS:
        require_real(program)
    with AuthSmtpServer(
        user=user, password=password, refused_sender=refused_sender, oauth2=oauth2
    ) as srv:
        yield srv
