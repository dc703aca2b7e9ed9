"""Unix sockets the daemons listen on: permissions, group, and stale files from a crash."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socket
import stat
from collections.abc import Callable
from pathlib import Path


class SocketError(Exception):
    """The LMTP socket cannot be set up; the message says why and what to do."""


def _remove_stale_socket(path: Path, owner: str) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketError(f"{path} exists and is not a socket: move it away")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        path.unlink(missing_ok=True)  # nobody listens: left over by a crash
        return
    finally:
        probe.close()
    raise SocketError(f"the {owner} socket {path} is in use by a running {owner}: stop it first")


async def listen_unix(
    path: Path,
    factory: Callable[[], asyncio.Protocol],
    group: str = "",
    setting: str = "store.socket_group",
    owner: str = "store",
) -> asyncio.Server:
    """Listens on path: parent directory 0750, socket 0660, both in `group` when given; owner
    (the daemon) is named when another one is listening there already."""
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    if path.parent.stat().st_uid == os.getuid():
        os.chmod(path.parent, 0o750)
    _remove_stale_socket(path, owner)
    server = await asyncio.get_running_loop().create_unix_server(factory, path=str(path))
    try:
        os.chmod(path, 0o660)
        if group:
            for target in (path.parent, path):
                shutil.chown(target, group=group)
    except (OSError, LookupError) as exc:
        server.close()
        path.unlink(missing_ok=True)
        if isinstance(exc, LookupError):
            raise SocketError(f"{setting}: no group named {group!r}") from None
        raise
    return server
