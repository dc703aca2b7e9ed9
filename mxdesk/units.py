"""The systemd units and sysusers/tmpfiles snippets, rendered for an installation prefix."""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_PREFIX = Path("/opt/mxdesk")

# Exit codes of `mxdesk gateway` and `mxdesk store` that a person has to act on (2: a bad
# configuration, 3: a start-up failure such as a port in use): restarting would only repeat them.
NO_RESTART_EXIT_CODES = "2 3"

_HEADER = """\
# /etc/systemd/system/{name}
# Made by `mxdesk systemd-units --prefix {prefix}`: to move mxdesk, run it again with the new
# prefix instead of editing the paths here.
"""

# No ExecStartPre=mxdesk check-config: the daemon checks its configuration itself and exits 2,
# and systemd's RestartPreventExitStatus= looks only at the main process's exit code (a failed
# ExecStartPre would be restarted over and over until the start limit).
_COMMON = """\
Type=notify
NotifyAccess=main
User=mxdesk
Group=mxdesk
# SIGTERM: stop accepting, finish what is in flight, exit 0.
KillSignal=SIGTERM
# systemctl reload: TLS certificate, log level and limits read again; a bad file is logged and
# the running configuration kept.
ExecReload=/bin/kill -HUP $MAINPID
TimeoutStopSec=60
# Exit 2 (bad configuration) and 3 (a start-up failure such as a port in use) need a person.
Restart=on-failure
RestartPreventExitStatus=@NO_RESTART@
RestartSec=2s
StateDirectory=mxdesk
StateDirectoryMode=0750
RuntimeDirectory=mxdesk
RuntimeDirectoryMode=0750
RuntimeDirectoryPreserve=yes
NoNewPrivileges=yes
# The installation prefix must be outside /home, /root and /tmp, which these hide.
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateMounts=yes
ProtectProc=invisible
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RemoveIPC=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
# What the daemons create is for the mxdesk user and group only.
UMask=0027
LimitNOFILE=65536
"""

_GATEWAY = """\
[Unit]
Description=mxdesk gateway (MX and submission listeners, spool, delivery to the store and out)
After=network-online.target mxdesk-store.service
Wants=network-online.target mxdesk-store.service

[Service]
ExecStart=@MXDESK@ gateway
# The key that decrypts company outbox passwords, as a credential instead of a file readable by
# the service user (see [mxdesk] secrets_credential):
#LoadCredential=mxdesk-secrets:/etc/mxdesk/secrets.key
@COMMON@\
# Bind port 25 as the unprivileged mxdesk user and nothing else.
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
AmbientCapabilities=CAP_NET_BIND_SERVICE
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6

[Install]
WantedBy=multi-user.target
"""

_STORE = """\
[Unit]
Description=mxdesk ticket store (LMTP server on a Unix socket, tickets.db)
After=local-fs.target

[Service]
ExecStart=@MXDESK@ store
@COMMON@\
# The store needs no capability, and no network: LMTP from the gateway and its submissions to
# the gateway go over Unix sockets in the file system, which a network namespace does not hide.
CapabilityBoundingSet=
PrivateNetwork=yes
RestrictAddressFamilies=AF_UNIX

[Install]
WantedBy=multi-user.target
"""

_SYSUSERS = """\
# /etc/sysusers.d/mxdesk.conf: the unprivileged user both daemons run as.
u mxdesk - "mxdesk mail gateway" /var/lib/mxdesk /usr/sbin/nologin
"""

_TMPFILES = """\
# /etc/tmpfiles.d/mxdesk.conf: the configuration, state and socket directories.
d /etc/mxdesk 0750 root mxdesk -
d /var/lib/mxdesk 0750 mxdesk mxdesk -
d /run/mxdesk 0750 mxdesk mxdesk -
d /run/mxdesk/store 0750 mxdesk mxdesk -
d /run/mxdesk/gateway 0750 mxdesk mxdesk -
"""

# Unit files take a path unquoted only without spaces, quotes, backslashes and % specifiers.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9._+/@-]*")

# Directories the units' sandbox replaces with an empty or private view.
_HIDDEN = {
    Path("/home"): "ProtectHome=yes",
    Path("/root"): "ProtectHome=yes",
    Path("/run/user"): "ProtectHome=yes",
    Path("/tmp"): "PrivateTmp=yes",
    Path("/var/tmp"): "PrivateTmp=yes",
}


class UnitsError(Exception):
    """A prefix the units cannot be made for."""


def render(prefix: Path) -> dict[str, str]:
    """The files by name (as in the source tree's systemd/ directory): the two units running
    <prefix>/bin/mxdesk, and the sysusers and tmpfiles snippets."""
    mxdesk = str(prefix / "bin" / "mxdesk")
    common = _COMMON.replace("@NO_RESTART@", NO_RESTART_EXIT_CODES)
    files = {}
    for name, template in (("mxdesk-gateway.service", _GATEWAY), ("mxdesk-store.service", _STORE)):
        body = template.replace("@COMMON@", common).replace("@MXDESK@", mxdesk)
        files[name] = _HEADER.format(name=name, prefix=prefix) + body
    files["mxdesk.sysusers"] = _SYSUSERS
    files["mxdesk.tmpfiles"] = _TMPFILES
    return files


def check_prefix(prefix: Path) -> Path:
    """The absolute prefix, once <prefix>/bin/mxdesk is there and a unit file can name it."""
    prefix = Path(os.path.abspath(prefix))
    if not _PLAIN_PATH.fullmatch(str(prefix)):
        raise UnitsError(
            f"prefix {str(prefix)!r} cannot be written unquoted in a unit file: install mxdesk "
            "into a path of letters, digits and . _ - + @ /, such as /opt/mxdesk"
        )
    if not os.access(prefix / "bin" / "mxdesk", os.X_OK):
        raise UnitsError(
            f"{prefix}/bin/mxdesk does not exist: give --prefix the directory mxdesk was "
            f"installed into (python3 -m venv {DEFAULT_PREFIX} && {DEFAULT_PREFIX}/bin/pip "
            "install .)"
        )
    return prefix


def hidden_by(prefix: Path) -> str | None:
    """The sandbox setting of the units that hides the prefix from the daemons, if one does."""
    for directory, setting in _HIDDEN.items():
        if prefix == directory or directory in prefix.parents:
            return setting
    return None


def write(files: dict[str, str], directory: Path) -> list[Path]:
    """Writes the files into directory (made if missing), world-readable like any unit file."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        path.chmod(0o644)
        written.append(path)
    return written
