"""A private Dovecot IMAP and POP3 server on loopback: the company mailbox a fetcher reads.

What a company mailbox looks like from outside (Gmail's imap.gmail.com, a hosting provider's
Dovecot): one Dovecot 2.3 instance with four loopback ports and one Maildir per user, all under
one temporary directory, stopped and removed on ``close()``; what a test does to the mailbox
behind the fetcher's back goes through ``doveadm``::

    for program in REQUIRED_PROGRAMS:
        require_real(program)
    with MailServer({"suporte@empresa.example": "s3nha"}) as srv:
        srv.imaps_port, srv.pop3s_port   # implicit TLS (993, 995)
        srv.imap_port, srv.pop3_port     # plain until STARTTLS / STLS (143, 110)
        srv.ca_file                      # verify the server (localhost, 127.0.0.1) against it
        srv.deliver("suporte@empresa.example", b"Subject: oi\\r\\n\\r\\nolá\\r\\n")
        srv.deliver(user, message, folder="Suporte/Ação")   # created if missing
        srv.set_flags(user, "\\\\Seen", uid=1)              # every message without uid
        srv.status(user)                 # {"messages": 1, "uidnext": 2, "uidvalidity": ...}
        srv.uids(user)                   # [1]
        srv.change_uidvalidity(user, 4242)
        srv.kick(user)                   # open sessions get BYE; returns once those are gone
        srv.set_password(user, "nova")   # applies at the next login

Behaviour a fetcher meets:

* LOGIN and AUTHENTICATE PLAIN / USER+PASS on every port. Loopback counts as a secure
  connection for Dovecot, so the plain ports accept a password before STARTTLS too.
* A wrong password gets ``NO [AUTHENTICATIONFAILED]`` (IMAP) or ``-ERR [AUTH]`` (POP3) without
  Dovecot's 2-second failure delay and without the growing penalty for repeated failures.
* With ``MailServer(users, oauth2=oauth_server.keys)`` also SASL XOAUTH2 and OAUTHBEARER, like
  Microsoft 365 and Gmail: Dovecot validates the JWT access token locally (signature with the
  issuer's key, exp, nbf, iat, iss; ``email`` must be the login). A refused token first gets a
  continuation with a base64 JSON error (``{"status":"401","schemes":"bearer","scope":"mail"}``)
  that the client answers with an empty line, then ``NO [AUTHENTICATIONFAILED]`` / ``-ERR``.
  PLAIN, LOGIN and USER/PASS keep taking only the password.
* The hierarchy separator is ``/``; folder names passed here are UTF-8, IMAP clients see them
  in modified UTF-7 (RFC 3501 §5.1.3): ``Suporte/Ação`` is ``Suporte/A&AOcA4w-o``.
* POP3 shows every message of INBOX, seen or not, and its UIDLs change with UIDVALIDITY.

Running as root (CI) and as a normal user: the master process runs as whoever runs the tests,
and everything else — login processes, auth, the IMAP/POP3 sessions, doveadm's mail access —
as one unprivileged "mail owner" whose uid and gid are in the passwd-file: the current user,
or ``nobody`` when that is root (Dovecot refuses mail access as root). Without those uids root
gets "Logged in, but initialization failed"; with them no user switch is needed before
starting anything, and doveadm, run as root, drops to the mail owner by itself.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from conftest import require_real
from daemons import free_port
from dovecot_common import MailServerError, end_session, mail_owner, oauth2_settings, wait_logged
from oauth_jwt import OAuth2Keys
from postfix_harness import postfix_binary
from tls_files import make_tls_files

REQUIRED_PROGRAMS = ("dovecot", "doveadm")
DH_PARAMETERS = Path("/usr/share/dovecot/dh.pem")

DOVECOT_CONF = """\
instance_name = mxdesk-mail-{port}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1

# Every process but the master runs as the mail owner; no chroot, which needs root.
default_internal_user = {owner.user}
default_internal_group = {owner.group}
default_login_user = {owner.user}
first_valid_uid = {owner.uid}
last_valid_uid = {owner.uid}
first_valid_gid = {owner.gid}
last_valid_gid = {owner.gid}
service anvil {{
  chroot =
  # No auth penalty: login_trusted_networks alone does not lift it (a second wrong password
  # and the next right one each waited 4 s), and a test may fail a login on purpose.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service auth-worker {{
  user = $default_internal_user
}}

ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
# Without it a client that offers only DHE ciphers fails the handshake.
ssl_dh = <{dh}

auth_mechanisms = plain login{oauth2_mechanisms}
# A wrong password answers at once (Dovecot waits 2 s by default).
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
# set_password() applies at the next login.
auth_cache_size = 0
passdb {{
  driver = passwd-file
  args = username_format=%u {root}/passwd{password_mechanisms}
}}
{oauth2_passdb}userdb {{
  driver = passwd-file
  args = username_format=%u {root}/passwd
}}

mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}

service imap-login {{
  chroot =
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = {imaps_port}
    ssl = yes
  }}
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = {pop3s_port}
    ssl = yes
  }}
}}
"""


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _greets(port: int, host: str = "127.0.0.1") -> bool:
    """True once the IMAP listener answers with its ``* OK`` greeting."""
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            return s.recv(200).startswith(b"* OK")
    except OSError:
        return False


class MailServer:
    """Dovecot serving IMAP and POP3, with and without implicit TLS, to the given users.

    ``users`` maps each login (an address) to its password. With ``oauth2`` (an
    ``oauth_jwt.OAuth2Keys``) every one of them can also log in with AUTHENTICATE XOAUTH2 /
    OAUTHBEARER (IMAP) and AUTH XOAUTH2 / OAUTHBEARER (POP3) and an access token of that issuer
    whose ``email`` claim is the login. Everything lives in a new directory under /tmp, removed
    on close.
    """

    host = "127.0.0.1"

    def __init__(self, users: dict[str, str], oauth2: OAuth2Keys | None = None) -> None:
        for user in users:
            if not user or any(c in user for c in ":/\n") or user.startswith("."):
                raise ValueError(f"user {user!r}: not empty, no ':', '/', newline or leading '.'")
        self._passwords = dict(users)
        self._oauth2 = oauth2
        self.owner = mail_owner()
        # The mail owner must reach its home below root, so root is not mkdtemp's 0700.
        self.root = Path(tempfile.mkdtemp(prefix="mb", dir="/tmp"))
        os.chmod(self.root, 0o755)
        self.ca_file, self._cert_file, self._key_file = make_tls_files(
            self.root / "tls", "localhost"
        )
        self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port = _free_ports(4)
        self._conf = self.root / "dovecot.conf"
        self._dovecot: subprocess.Popen[bytes] | None = None
        self._passwd_mtime = 0

    # -- running ---------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Starts Dovecot; returns once the IMAP port greets. MailServerError with the log
        if it exits or does not greet within timeout seconds."""
        binary = postfix_binary("dovecot")  # a lookup in PATH and the sbin directories
        if binary is None:
            raise MailServerError("dovecot is not installed")
        homes = self.root / "home"
        homes.mkdir()
        shutil.chown(homes, self.owner.uid, self.owner.gid)
        self._write_passwd()
        self._conf.write_text(
            DOVECOT_CONF.format(
                root=self.root,
                port=self.imap_port,
                owner=self.owner,
                cert=self._cert_file,
                key=self._key_file,
                dh=DH_PARAMETERS,
                imap_port=self.imap_port,
                imaps_port=self.imaps_port,
                pop3_port=self.pop3_port,
                pop3s_port=self.pop3s_port,
                **oauth2_settings(self.root, self._oauth2, self.owner.uid, self.owner.gid),
            )
        )
        try:
            with open(self.root / "stderr", "wb") as stderr:
                # Its own session, so that close() can end the master and what it forked.
                self._dovecot = subprocess.Popen(
                    [binary, "-F", "-c", str(self._conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                    start_new_session=True,
                )
            self._wait(self._ready, timeout, f"IMAP on port {self.imap_port}")
        except BaseException:
            self.close()
            raise

    def _ready(self) -> bool:
        if self._dovecot is not None and self._dovecot.poll() is not None:
            raise MailServerError(f"dovecot exited {self._dovecot.returncode}: {self.log_text()}")
        return _greets(self.imap_port)

    def close(self) -> None:
        """Stops Dovecot and removes its directory."""
        if self._dovecot is not None:
            end_session(self._dovecot)
            self._dovecot = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> MailServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_text(self) -> str:
        """Dovecot's output and log, for a failing test's message."""
        paths = [self.root / name for name in ("stderr", "dovecot.log")]
        return "".join(p.read_text(errors="replace") for p in paths if p.exists())

    # -- the mailbox behind the fetcher's back --------------------------------------------

    def deliver(self, user: str, message: bytes, folder: str = "INBOX") -> None:
        """Saves message into the user's folder (created and subscribed if missing)."""
        if (
            folder.upper() != "INBOX"
            and folder not in self._doveadm("mailbox", "list", "-u", user).splitlines()
        ):
            self._doveadm("mailbox", "create", "-s", "-u", user, folder)
        self._doveadm("save", "-u", user, "-m", folder, input=message)

    def set_flags(
        self, user: str, flags: str, folder: str = "INBOX", uid: int | None = None
    ) -> None:
        """Adds flags (space-separated, e.g. ``\\Seen``) to one message or, without uid, all."""
        which = ["all"] if uid is None else ["uid", str(uid)]
        self._doveadm("flags", "add", "-u", user, flags, "mailbox", folder, *which)

    def kick(self, user: str, timeout: float = 10.0) -> None:
        """Ends the user's IMAP and POP3 sessions (they get BYE); returns once the sessions
        open at the kick are gone. A fetcher may already have logged in again by then: each
        session's line (it carries the process id) tells an old session from a new one."""
        before = set(self._sessions(user))
        # Exit code 68 (EX_NOUSER) only says nobody was connected.
        self._doveadm("kick", user, ok_codes=(0, 68))
        self._wait(
            lambda: not before & set(self._sessions(user)), timeout, f"{user}'s sessions to end"
        )

    def _sessions(self, user: str) -> list[str]:
        lines = self._doveadm("-f", "tab", "who", "-1", user).splitlines()[1:]
        return [line for line in lines if line.split("\t", 1)[0] == user]

    def change_uidvalidity(self, user: str, value: int, folder: str = "INBOX") -> None:
        """Sets the folder's UIDVALIDITY; UIDs stay, POP3 UIDLs change with it."""
        self._doveadm("mailbox", "update", "-u", user, "--uid-validity", str(value), folder)

    def status(self, user: str, folder: str = "INBOX") -> dict[str, int]:
        """The folder's ``messages``, ``uidnext`` and ``uidvalidity``."""
        out = self._doveadm(
            "-f", "tab", "mailbox", "status", "-u", user, "messages uidnext uidvalidity", folder
        )
        names, values = (line.split("\t") for line in out.splitlines()[:2])
        row = dict(zip(names, values, strict=True))
        return {name: int(row[name]) for name in ("messages", "uidnext", "uidvalidity")}

    def uids(self, user: str, folder: str = "INBOX") -> list[int]:
        """The UIDs of the folder's messages, in order."""
        out = self._doveadm("-f", "tab", "fetch", "-u", user, "uid", "mailbox", folder, "all")
        return [int(line) for line in out.splitlines()[1:] if line]

    def message_ids(self, user: str, folder: str = "INBOX") -> list[str]:
        """The Message-ID header of each message of the folder, in UID order."""
        out = self._doveadm(
            "-f", "tab", "fetch", "-u", user, "hdr.message-id", "mailbox", folder, "all"
        )
        return [line.strip() for line in out.splitlines()[1:] if line.strip()]

    def set_password(self, user: str, password: str) -> None:
        """Changes the user's password for every login from now on; sessions already open
        stay open. Takes up to a second (see below)."""
        if user not in self._passwords:
            raise KeyError(user)
        self._passwords[user] = password
        second = int(time.time())
        self._write_passwd()
        # Dovecot's auth process stats the passwd-file at most once per second of its clock
        # (db-passwd-file.c, last_sync_time): a login later in the second of the write could
        # still see the old password. From the next second on, every login sees the new one.
        self._wait(lambda: int(time.time()) > second, 5.0, "the clock's next second")

    # -- helpers ---------------------------------------------------------------------------

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Polls condition; MailServerError with the end of Dovecot's log after timeout."""
        wait_logged(condition, timeout, what, self.log_text, MailServerError)

    def _write_passwd(self) -> None:
        lines = []
        for user, password in self._passwords.items():
            # Stored hashed, so a password may hold ':' (which would end a plain one).
            digest = base64.b64encode(hashlib.sha256(password.encode()).digest()).decode()
            home = self.root / "home" / user
            owner = f"{self.owner.uid}:{self.owner.gid}"
            lines.append(f"{user}:{{SHA256}}{digest}:{owner}::{home}::\n")
        # Written whole and renamed: a login never reads half a file. Dovecot rereads it only
        # when its size or its mtime in whole seconds changed, and every hash has the same
        # length: each version gets a later mtime, even within one second.
        self._passwd_mtime = max(int(time.time()), self._passwd_mtime + 1)
        tmp = self.root / "passwd.tmp"
        tmp.write_text("".join(lines))
        os.utime(tmp, (self._passwd_mtime, self._passwd_mtime))
        tmp.replace(self.root / "passwd")

    def _doveadm(
        self, *args: str, input: bytes | None = None, ok_codes: tuple[int, ...] = (0,)
    ) -> str:
        binary = postfix_binary("doveadm")
        if binary is None:
            raise MailServerError("doveadm is not installed")
        result = subprocess.run(
            [binary, "-c", str(self._conf), *args],
            input=input if input is not None else b"",
            capture_output=True,
            timeout=30,
        )
        if result.returncode not in ok_codes:
            raise MailServerError(
                f"doveadm {' '.join(args)} exited {result.returncode}: "
                f"{result.stderr.decode(errors='replace')}"
            )
        return result.stdout.decode()


def mail_server(users: dict[str, str], oauth2: OAuth2Keys | None = None) -> Iterator[MailServer]:
    """A started MailServer for a module fixture (``yield from mail_server(USERS)``); skips
    without Dovecot, fails under CI (MXDESK_REQUIRE_REAL=1)."""
    for program in REQUIRED_PROGRAMS:
        require_real(program)
    with MailServer(users, oauth2=oauth2) as srv:
        yield srv
