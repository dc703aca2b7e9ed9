"""A private Postfix instance in a temporary directory, for tests and the bench.

Postfix runs here as a *peer*: a sending MTA that relays mail for the hosted domains to the
gateway (``PostfixInstance.relaying``), or a receiving MTA that accepts mail for a domain and
drops it (``PostfixInstance.discarding``), the fair yardstick for accept rates.

What a second instance needs, found with Debian's Postfix 3.7 (run as root):

* ``postfix -c DIR start`` works from any directory that holds a ``main.cf`` and a
  ``master.cf``, as root: nothing has to be listed in ``alternate_config_directories`` or
  ``multi_instance_directories``, no ``postmulti`` is needed, and there need not be a system
  ``/etc/postfix/main.cf`` at all (Debian's package, installed unconfigured, has none). The
  daemons inherit the directory through ``MAIL_CONFIG`` (in ``import_environment`` by default).
  ``sendmail -C DIR``, ``postqueue -c DIR`` and ``postconf -c DIR`` work the same way as root.
  An unprivileged user is different: ``sendmail``/``postdrop`` then insist on reading the default
  ``/etc/postfix/main.cf`` and finding DIR authorised there, which would mean touching the
  system configuration — so submit as root (as here) or by SMTP to the instance's port.
* ``meta_directory`` stays at its default (``/etc/postfix``), where ``postfix-files`` and
  ``dynamicmaps.cf`` live; ``postfix start`` runs ``post-install create-missing``, which makes
  the queue subdirectories in ``queue_directory`` with their owners and modes.
* ``queue_directory`` must be owned by root and reachable by the ``postfix`` user (every
  daemon ``chdir``s into it), hence mode 0755 on the temporary directory itself;
  ``data_directory`` must be owned by ``mail_owner``. Those are made here.
* ``master.cf`` turns chroot off (column 5 ``n``) — a chroot would need copies of
  ``/etc/services``, resolver files and libraries under the queue directory — and binds smtpd to
  ``127.0.0.1:<port>`` explicitly, so the instance never touches port 25.
* ``myhostname`` is set so that Message-IDs and log lines do not depend on the machine (a
  short host name would become ``<name>.localdomain``). Maps are ``texthash:`` so no
  ``postmap`` is needed; ``alias_maps`` and ``local_recipient_maps`` are
  empty because there is no local delivery. ``maillog_file`` (served by the ``postlog``
  service in master.cf) gives a log file to read, without syslog; its path must start with one
  of ``maillog_file_prefixes`` (default ``/var, /dev/stdout``), so that is set to the directory.
  Until then the ``postfix`` command reports its fatal errors to syslog only (or to a terminal),
  which is why a failing ``postfix check`` looks silent without it.
* ``default_transport = error:…``: the only deliveries are to the configured next hop; a bounce
  for an outside address fails at once instead of looking up a real domain in DNS.
* ``postfix -c DIR stop`` ends it; if that fails, ``postfix -c DIR abort``.

Postfix always fsyncs a queue file before it answers 250 to DATA, also when the transport is
``discard:``; the discard mode only saves the delivery work after that.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemons import free_port

MAIL_OWNER = "postfix"
SETGID_GROUP = "postdrop"
HOSTNAME = "mta.postfix-peer.test"

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = {owner}
setgid_group = {group}
myhostname = {hostname}
mydomain = postfix-peer.test
myorigin = $myhostname
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = {relay_domains}
relay_recipient_maps = {relay_recipient_maps}
transport_maps = texthash:{transport}
default_transport = error:5.7.1 this test instance delivers only to its configured next hop
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtputf8_enable = yes
maillog_file = {maillog}
maillog_file_prefixes = {root}
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 5s
maximal_queue_lifetime = 10m
bounce_queue_lifetime = 10m
delay_warning_time = 0
"""

# No chroot anywhere (column 5). Only the services a relay or a discarding receiver uses.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
smtp      unix  -       -       n       -       -       smtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(RuntimeError):
    """The private Postfix instance could not be set up, started or used."""


def postfix_binary(name: str = "postfix") -> str | None:
    """The path of a Postfix command (postfix, sendmail, postqueue, smtp-source), or None."""
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )


def postfix_version() -> str:
    """The installed Postfix's version (e.g. 3.7.11), "" without postconf."""
    binary = postfix_binary("postconf")
    if binary is None:
        return ""
    return subprocess.run(
        [binary, "-d", "-h", "mail_version"], capture_output=True, text=True, timeout=30
    ).stdout.strip()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    """True while a process runs (a zombie left for a reaper that never comes counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rpartition(")")[2].split()[0] != "Z"


def _unreachable_ancestor(path: Path) -> Path | None:
    """The first directory above path the ``postfix`` user cannot search, or None."""
    owner = pwd.getpwnam(MAIL_OWNER)
    for parent in path.resolve().parents:
        st = parent.stat()
        if st.st_mode & stat.S_IXOTH:
            continue
        if st.st_uid == owner.pw_uid and st.st_mode & stat.S_IXUSR:
            continue
        if st.st_gid == owner.pw_gid and st.st_mode & stat.S_IXGRP:
            continue
        return parent
    return None


@dataclass
class PostfixInstance:
    """One Postfix instance: its config, queue and data directories under ``root``.

    Without a ``root`` the instance makes its own directory under /tmp and ``cleanup()``
    removes it. A given ``root`` must be searchable by the ``postfix`` user all the way down
    (a ``tempfile.mkdtemp`` directory is 0700: put the instance beside it, not inside).
    """

    port: int
    routes: dict[str, str]
    relay_recipients: Sequence[str] = ()
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pf", dir="/tmp")))
    keep: bool = False

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def relaying(cls, domain: str, gateway_port: int, **kwargs: Any) -> PostfixInstance:
        """A sending MTA: mail for ``domain`` and its subdomains goes to the gateway by SMTP."""
        nexthop = f"smtp:[127.0.0.1]:{gateway_port}"
        return cls(
            kwargs.pop("port", None) or free_port(),
            {domain: nexthop, f".{domain}": nexthop},
            **kwargs,
        )

    @classmethod
    def discarding(
        cls, domain: str, recipients: Sequence[str] = (), **kwargs: Any
    ) -> PostfixInstance:
        """A receiving MTA: accepts mail for ``domain`` (only ``recipients`` if given) and drops
        it after queueing it (with its fsync) like any other message."""
        return cls(
            kwargs.pop("port", None) or free_port(),
            {domain: "discard:", f".{domain}": "discard:"},
            tuple(recipients),
            **kwargs,
        )

    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    def write_config(self) -> None:
        """Writes main.cf, master.cf and the maps; makes the directories with their owners."""
        self.root.mkdir(parents=True, exist_ok=True)
        blocked = _unreachable_ancestor(self.root)
        if blocked is not None:
            raise PostfixError(
                f"{blocked} is not searchable by the {MAIL_OWNER} user, so"
                f" Postfix cannot use {self.root}: choose a directory outside it"
            )
        os.chmod(self.root, 0o755)  # daemons running as `postfix` chdir into the queue
        for path in (self.config_dir, self.queue_dir, self.data_dir):
            path.mkdir(mode=0o755, exist_ok=True)
        shutil.chown(self.data_dir, MAIL_OWNER, MAIL_OWNER)
        transport = self.config_dir / "transport"
        transport.write_text("".join(f"{d} {nexthop}\n" for d, nexthop in self.routes.items()))
        recipient_maps = ""
        if self.relay_recipients:
            recipients = self.config_dir / "relay_recipients"
            recipients.write_text("".join(f"{r} ok\n" for r in self.relay_recipients))
            recipient_maps = f"texthash:{recipients}"
        main = MAIN_CF.format(
            queue=self.queue_dir,
            data=self.data_dir,
            owner=MAIL_OWNER,
            group=SETGID_GROUP,
            hostname=HOSTNAME,
            transport=transport,
            maillog=self.maillog,
            root=self.root,
            relay_domains=", ".join(d for d in self.routes if not d.startswith(".")),
            relay_recipient_maps=recipient_maps,
        )
        (self.config_dir / "main.cf").write_text(main)
        (self.config_dir / "master.cf").write_text(MASTER_CF.format(port=self.port))

    # -- running ---------------------------------------------------------------------------

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        binary = postfix_binary()
        if binary is None:
            raise PostfixError("postfix is not installed")
        proc = subprocess.run(
            [binary, "-c", str(self.config_dir), *args], capture_output=True, text=True, timeout=60
        )
        if check and proc.returncode != 0:
            raise PostfixError(
                f"postfix {' '.join(args)} exited {proc.returncode}:"
                f" {proc.stderr.strip()} {self.log_tail()}"
            )
        return proc

    def check(self) -> str:
        """``postfix check``: raises PostfixError on a fatal problem, returns the warnings."""
        return self._postfix("check").stderr

    def start(self, timeout: float = 30.0) -> None:
        """Writes the configuration, starts the instance and waits until smtpd answers."""
        self.write_config()
        self._postfix("start")
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if time.monotonic() > deadline:
                self.stop()
                raise PostfixError(f"smtpd on port {self.port} did not open: {self.log_tail()}")
            time.sleep(0.05)

    def master_pid(self) -> int | None:
        """The pid of the running master process, or None."""
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None
        return pid if _alive(pid) else None

    def stop(self, timeout: float = 30.0) -> None:
        """``postfix stop`` and waits for master to exit; ``postfix abort`` if it does not."""
        pid = self.master_pid()
        if pid is None:
            return
        stopped = self._postfix("stop", check=False).returncode == 0
        deadline = time.monotonic() + timeout
        while stopped and _alive(pid):
            if time.monotonic() > deadline:
                stopped = False
                break
            time.sleep(0.05)
        if not stopped:
            self._postfix("abort", check=False)

    def __enter__(self) -> PostfixInstance:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.cleanup()

    def cleanup(self) -> None:
        """Removes the instance's directory (unless ``keep``); the instance must be stopped."""
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- using -----------------------------------------------------------------------------

    def sendmail(self, message: bytes, sender: str, recipients: Sequence[str]) -> None:
        """Submits a message as a local user would: ``sendmail -C DIR -f sender -- rcpt…``."""
        binary = postfix_binary("sendmail")
        if binary is None:
            raise PostfixError("sendmail is not installed")
        proc = subprocess.run(
            [binary, "-C", str(self.config_dir), "-f", sender, "-i", "--", *recipients],
            input=message,
            capture_output=True,
            timeout=30,
        )
        if proc.returncode != 0:
            raise PostfixError(f"sendmail exited {proc.returncode}: {proc.stderr!r}")

    def log_text(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def deliveries(self, status: str = "sent") -> list[str]:
        """The log lines of deliveries with ``status=<status>``."""
        return [line for line in self.log_text().splitlines() if f" status={status} " in line]

    def flush(self) -> None:
        """``postqueue -f``: tries every deferred message now instead of at its next retry."""
        binary = postfix_binary("postqueue")
        if binary is None:
            raise PostfixError("postqueue is not installed")
        subprocess.run([binary, "-c", str(self.config_dir), "-f"], check=True, timeout=30)

    def queue_is_empty(self) -> bool:
        """True when no message waits in the instance's queue."""
        binary = postfix_binary("postqueue")
        if binary is None:
            raise PostfixError("postqueue is not installed")
        proc = subprocess.run(
            [binary, "-c", str(self.config_dir), "-j"], capture_output=True, text=True, timeout=30
        )
        return proc.returncode == 0 and not proc.stdout.strip()
